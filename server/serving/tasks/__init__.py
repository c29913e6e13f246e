"""The task endpoints (/v1/summarize, /v1/translate): chunking, prompts, length control, language detection."""
