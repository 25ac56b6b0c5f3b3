//! The RegGAN training loop of ncct2ctpa.
