"""Checkpoint conversion: official UNITER state dicts (:mod:`.official`), parity checks against the
official fixtures (:mod:`.parity`) and HF-BERT safetensors (:mod:`.hf_bert`)."""
