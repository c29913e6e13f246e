"""OpenAI-protocol serving: chat, completions, their logprobs, structured output and tool-call parsing."""
