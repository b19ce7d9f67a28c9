"""Lightning attention (MiniMax-Text-01/M1) inside vLLM: the layer (`layer.py`: vLLM's
linear-attention state cache, one float32 (H, D, D) state per request) and the hybrid
model that serves checkpoints in Hugging Face's MiniMax format (`model.py`)."""
