//! `steerlm import-nemo`: NeMo / Megatron-core reward-model checkpoints to Hugging Face
//! folders that steerlm and transformers both load.
//!
//! - [`blosc`], [`zarr`]: the `zarr` distributed-checkpoint container;
//! - [`legacy`], [`pickle`]: legacy `model_weights.ckpt` files (torch.save zips), merged
//!   across tensor-parallel ranks;
//! - [`sentencepiece`]: a `tokenizer.model` to the equivalent `tokenizer.json`;
//! - [`shards`]: the safetensors output, written one tensor at a time;
//! - [`store`]: the checkpoint's files, in a folder or in a `.nemo` tar read in place.

pub mod blosc;
pub mod config;
pub mod import;
pub mod legacy;
pub mod pickle;
pub mod sentencepiece;
pub mod shards;
pub mod store;
pub mod zarr;
