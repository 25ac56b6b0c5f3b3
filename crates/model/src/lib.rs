//! The RegGAN model of ncct2ctpa on tch (libtorch): generator G, registration network R with
//! its spatial transformer, the spectral-norm PatchGAN discriminator D, the losses and the
//! optimizer whose state can be saved (exact resume).

pub mod attention;
pub mod blocks;
pub mod config;
pub mod device;
pub mod discriminator;
pub mod finite;
pub mod flops;
pub mod generator;
pub mod guard;
pub mod losses;
pub mod optim;
pub mod perceptual;
pub mod precision;
pub mod r1;
pub mod registration;
pub mod spectral_norm;
pub mod ssim;
pub mod summary;
pub mod warp;
