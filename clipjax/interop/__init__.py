"""Import and export of published CLIP weights: HF transformers CLIP directories
(`config.json` + safetensors) and OpenCLIP/OpenAI state dicts, mapped onto the
clipjax two-tower model. PyTorch is only needed to read `.bin`/`.pt` files."""
