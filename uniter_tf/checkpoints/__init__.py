"""Checkpoint conversion: official UNITER state dicts (:mod:`.official`), PyTorch ``torch.save`` files read
without torch or pickle code (:mod:`.torch_format`), parity checks against the official fixtures
(:mod:`.parity`) and HF-BERT safetensors (:mod:`.hf_bert`)."""
