//! The seeded 3D chest phantom generator (being written).

pub mod noise;
