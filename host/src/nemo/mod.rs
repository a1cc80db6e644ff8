//! `steerlm import-nemo`: NeMo / Megatron-core reward-model checkpoints to Hugging Face
//! folders that steerlm and transformers both load.
//!
//! - [`blosc`], [`zarr`]: the `zarr` distributed-checkpoint container;
//! - [`torch_dist`]: the `torch_dist` distributed-checkpoint container;
//! - [`legacy`]: legacy `model_weights.ckpt` files, merged across tensor-parallel ranks;
//! - [`torch_save`], [`pickle`]: files written by `torch.save` (legacy checkpoints and
//!   every `torch_dist` chunk), read with a small safe unpickler;
//! - [`region`]: assembling tensors from the chunks distributed checkpoints store;
//! - [`sentencepiece`]: a `tokenizer.model` to the equivalent `tokenizer.json`;
//! - [`shards`]: the safetensors output, written one tensor at a time;
//! - [`store`]: the checkpoint's files, in a folder or in a `.nemo` tar read in place.

pub mod blosc;
pub mod config;
pub mod import;
pub mod legacy;
pub mod pickle;
pub mod region;
pub mod sentencepiece;
pub mod shards;
pub mod store;
pub mod torch_dist;
pub mod torch_save;
pub mod zarr;
