"""An OpenAI-compatible HTTP server over every genloom model family, with iteration-level batching and a web page."""
