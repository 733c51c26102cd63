"""Which files make up an adapter that can be loaded again (optimizer and scheduler state stay on the box)."""

ADAPTER_FILE_PATTERNS = ("adapter_*", "tokenizer*", "special_tokens_map.json", "chat_template*", "README.md")
