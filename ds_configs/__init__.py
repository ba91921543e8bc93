"""DeepSpeed ZeRO templates (zero1/2/3.json), shipped as package data; read by lingraft.train.ds_config."""
