"""The logic behind the routes: chat, completions, and the task endpoints."""
