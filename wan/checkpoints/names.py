"""File and folder names of the two checkpoint layouts (facts of the official and diffusers releases)."""

OFFICIAL_EXPERTS = ("high_noise_model", "low_noise_model")  # two-expert releases; a one-model release: the root
OFFICIAL_VAE = "Wan2.1_VAE.pth"  # z_dim 16, with the A14B experts
OFFICIAL_VAE_22 = "Wan2.2_VAE.pth"  # z_dim 48, with TI2V-5B
WAN22_VAE_Z_DIM = 48  # the Wan2.2 VAE's latent channels (the Wan2.1 VAE has 16)
OFFICIAL_T5 = "models_t5_umt5-xxl-enc-bf16.pth"
OFFICIAL_TOKENIZER = "google/umt5-xxl"
DIFFUSERS_EXPERTS = ("transformer", "transformer_2")  # high-noise (or the only model), low-noise
WEIGHTS_STEM = "diffusion_pytorch_model"  # official experts and diffusers models
TEXT_ENCODER_STEM = "model"  # transformers models
ROOT = "."  # the expert folder of an official one-model checkpoint: the checkpoint folder itself
