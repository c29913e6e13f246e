"""The logic behind the routes: openai/ (chat, completions), tasks/ (summarize, translate), and what both
share here: admission (backpressure), engine_stream (one engine request as an async stream), respond, trace."""
