"""`lingraft eval`: tokenizer-independent measurements of what adaptation buys and costs."""
