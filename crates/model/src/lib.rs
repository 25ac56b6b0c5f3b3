//! The RegGAN model of ncct2ctpa on tch (libtorch): generator G, registration network R with
//! its spatial transformer, the spectral-norm PatchGAN discriminator D, and the losses.
