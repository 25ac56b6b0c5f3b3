//! The three networks of a run and their optimizers, and how their weights are stored.
//!
//! G and R live in one `VarStore` (under `generator.` and `registration.`) because one Adam
//! updates them together, on one loss (RegGAN); D has its own `VarStore` and its own Adam. On
//! disk each network gets its own safetensors file with the names it would have at the root
//! of a store of its own (`generator.safetensors` holds G's variables without the
//! `generator.` prefix), so `predict` builds a lone G and loads that file directly.
//! Non-trainable variables (spectral-norm u and v, batch-norm running statistics) are
//! variables of the stores and are saved with the weights.

use crate::config::TrainConfig;
use anyhow::{bail, Context};
use infer::checkpoint::{
    DISCRIMINATOR_FILE, GENERATOR_EMA_FILE, GENERATOR_FILE, REGISTRATION_FILE,
};
use model::discriminator::Discriminator;
use model::generator::Generator;
use model::optim::Adam;
use model::registration::RegistrationNet;
use std::collections::HashMap;
use std::path::Path;
use tch::nn::VarStore;
use tch::{Device, Tensor};

/// Sub-path of G in the G+R store.
pub const GENERATOR: &str = "generator";
/// Sub-path of R in the G+R store.
pub const REGISTRATION: &str = "registration";

/// G, R (unless training without registration) and D, with their stores.
pub struct Nets {
    /// G and R's variables.
    pub gr_store: VarStore,
    /// D's variables.
    pub d_store: VarStore,
    pub g: Generator,
    pub r: Option<RegistrationNet>,
    pub d: Discriminator,
    /// The perceptual loss's frozen VGG, when that loss is on: plain tensors outside the stores
    /// (never optimised, never saved). `None` from [`Nets::new`]; set by
    /// [`crate::image_losses::attach`].
    pub perceptual: Option<model::perceptual::Perceptual>,
    /// The EMA of G's weights (`[ema]`), a G of its own.
    pub ema: Option<Ema>,
}

/// An exponential moving average of G's weights ([`crate::config::EmaConfig`]).
pub struct Ema {
    /// Its variables, under `generator.` as in the G+R store.
    pub store: VarStore,
    pub g: Generator,
    pub decay: f64,
}

impl Ema {
    /// A copy of `g`'s variables (`from`, under `generator.`), decaying at `decay`.
    fn new(from: &VarStore, cfg: &model::config::GeneratorConfig, decay: f64) -> Self {
        let store = VarStore::new(from.device());
        let g = Generator::new(&(store.root() / GENERATOR), cfg);
        let ema = Self { store, g, decay };
        ema.copy_from(from);
        ema
    }

    /// Pairs of (EMA variable, G variable), by name.
    fn pairs(&self, from: &VarStore) -> Vec<(Tensor, Tensor)> {
        let src = from.variables();
        let mut pairs: Vec<(String, Tensor, Tensor)> = self
            .store
            .variables()
            .into_iter()
            .filter_map(|(name, t)| src.get(&name).map(|s| (name, t, s.shallow_clone())))
            .collect();
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        pairs.into_iter().map(|(_, e, g)| (e, g)).collect()
    }

    fn copy_from(&self, from: &VarStore) {
        let _guard = tch::no_grad_guard();
        for (mut e, g) in self.pairs(from) {
            e.copy_(&g);
        }
    }

    /// `ema = decay * ema + (1 - decay) * G`, every variable (buffers too), on the device.
    pub fn update(&self, from: &VarStore) {
        let _guard = tch::no_grad_guard();
        for (mut e, g) in self.pairs(from) {
            let _ = e.lerp_(&g, 1.0 - self.decay);
        }
    }
}

impl std::fmt::Debug for Nets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nets")
            .field("gr_variables", &self.gr_store.len())
            .field("d_variables", &self.d_store.len())
            .field("registration", &self.r.is_some())
            .finish()
    }
}

/// One Adam for G + R, one for D, and the loss scaler of mixed precision (disabled unless
/// `amp = "f16"`; see `crate::amp`).
pub struct Optimizers {
    pub gr: Adam,
    pub d: Adam,
    pub scaler: crate::amp::LossScaler,
}

impl std::fmt::Debug for Optimizers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Optimizers")
            .field("gr", &self.gr)
            .field("d", &self.d)
            .field("scaler", &self.scaler)
            .finish()
    }
}

impl Nets {
    /// Builds the networks of `cfg` on `device`. Initial weights come from libtorch's RNG,
    /// which is seeded from `cfg.seed` first, so a seed gives the same initial networks.
    pub fn new(cfg: &TrainConfig, device: Device) -> Self {
        tch::manual_seed(cfg.seed as i64);
        let gr_store = VarStore::new(device);
        let d_store = VarStore::new(device);
        let g = Generator::new(&(gr_store.root() / GENERATOR), &cfg.model.generator);
        let r = cfg.registration.then(|| {
            RegistrationNet::new(&(gr_store.root() / REGISTRATION), &cfg.model.registration)
        });
        let d = Discriminator::new(&d_store.root(), &cfg.model.discriminator);
        let ema = cfg
            .ema
            .enabled()
            .then(|| Ema::new(&gr_store, &cfg.model.generator, cfg.ema.decay));
        Self {
            gr_store,
            d_store,
            g,
            r,
            d,
            perceptual: None,
            ema,
        }
    }

    /// Fresh optimizers for these networks.
    /// Fails when `cfg.amp` cannot run on the networks' device (`crate::amp::check_device`).
    pub fn optimizers(&self, cfg: &TrainConfig) -> anyhow::Result<Optimizers> {
        crate::amp::check_device(cfg.amp, self.gr_store.device())?;
        let mut gr = Adam::new(&self.gr_store, cfg.optim.generator).context("Adam of G + R")?;
        let factor = cfg.optim.registration_lr_factor;
        if self.r.is_some() && factor != 1.0 {
            let n = gr
                .scale_lr(&format!("{REGISTRATION}."), factor)
                .context("optim.registration_lr_factor")?;
            tracing::info!("R's learning rate: {factor} x G's ({n} variables)");
        }
        Ok(Optimizers {
            gr,
            d: Adam::new(&self.d_store, cfg.optim.discriminator).context("Adam of D")?,
            scaler: crate::amp::LossScaler::new(cfg.amp),
        })
    }

    /// Every variable of G+R and D (weights and buffers: the spectral-norm vectors, norm
    /// statistics), G+R's first, each store's by name: the same order in every process, for
    /// the data-parallel broadcast.
    pub fn variables_in_order(&self) -> Vec<Tensor> {
        [&self.gr_store, &self.d_store]
            .into_iter()
            .flat_map(|vs| {
                let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
                named.sort_by(|a, b| a.0.cmp(&b.0));
                named.into_iter().map(|(_, t)| t)
            })
            .collect()
    }

    /// Writes `generator.safetensors`, `registration.safetensors` (with R) and
    /// `discriminator.safetensors` into `dir`.
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        save_prefixed(&self.gr_store, GENERATOR, &dir.join(GENERATOR_FILE))?;
        if let Some(ema) = &self.ema {
            save_prefixed(&ema.store, GENERATOR, &dir.join(GENERATOR_EMA_FILE))?;
        }
        if self.r.is_some() {
            save_prefixed(&self.gr_store, REGISTRATION, &dir.join(REGISTRATION_FILE))?;
        }
        let path = dir.join(DISCRIMINATOR_FILE);
        self.d_store
            .save(&path)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Loads what [`Nets::save`] wrote; every variable must be present with its shape.
    pub fn load(&mut self, dir: &Path) -> anyhow::Result<()> {
        load_prefixed(&self.gr_store, GENERATOR, &dir.join(GENERATOR_FILE))?;
        if let Some(ema) = &self.ema {
            let path = dir.join(GENERATOR_EMA_FILE);
            if !path.is_file() {
                bail!(
                    "{}: the run keeps an EMA of G ([ema] decay = {}) but the checkpoint has no \
                     {GENERATOR_EMA_FILE}",
                    dir.display(),
                    ema.decay
                );
            }
            load_prefixed(&ema.store, GENERATOR, &path)?;
        }
        if self.r.is_some() {
            load_prefixed(&self.gr_store, REGISTRATION, &dir.join(REGISTRATION_FILE))?;
        }
        let path = dir.join(DISCRIMINATOR_FILE);
        self.d_store
            .load(&path)
            .with_context(|| format!("loading {}", path.display()))?;
        let d = self.d_store.variables();
        model::finite::check_finite(d.iter().map(|(n, t)| (n.as_str(), t)), &path)
    }

    /// The G that validation, samples and inference use: the EMA's when the run keeps one.
    pub fn inference_g(&self) -> &Generator {
        self.ema.as_ref().map_or(&self.g, |e| &e.g)
    }

    /// The variables of G (`generator.*`) and R (`registration.*`) of the G+R store.
    pub fn gr_variables(&self, prefix: &str) -> Vec<Tensor> {
        let p = format!("{prefix}.");
        let mut named: Vec<(String, Tensor)> = self
            .gr_store
            .variables()
            .into_iter()
            .filter(|(n, _)| n.starts_with(&p))
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        named.into_iter().map(|(_, t)| t).collect()
    }
}

/// Saves the variables under `prefix.` with the prefix removed.
fn save_prefixed(vs: &VarStore, prefix: &str, path: &Path) -> anyhow::Result<()> {
    let p = format!("{prefix}.");
    let mut named: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter_map(|(n, t)| {
            n.strip_prefix(&p)
                .map(|s| (s.to_owned(), t.to_device(Device::Cpu).contiguous()))
        })
        .collect();
    if named.is_empty() {
        bail!("no variables under {prefix:?} to save");
    }
    named.sort_by(|a, b| a.0.cmp(&b.0));
    Tensor::write_safetensors(&named, path).with_context(|| format!("writing {}", path.display()))
}

/// Loads a file written by [`save_prefixed`] into the variables under `prefix.`.
fn load_prefixed(vs: &VarStore, prefix: &str, path: &Path) -> anyhow::Result<()> {
    let file: HashMap<String, Tensor> = Tensor::read_safetensors(path)
        .with_context(|| format!("reading {}", path.display()))?
        .into_iter()
        .collect();
    model::finite::check_finite(file.iter().map(|(n, t)| (n.as_str(), t)), path)?;
    let p = format!("{prefix}.");
    let _guard = tch::no_grad_guard();
    for (name, mut var) in vs.variables() {
        let Some(short) = name.strip_prefix(&p) else {
            continue;
        };
        let Some(src) = file.get(short) else {
            bail!("{}: variable {short:?} is missing", path.display());
        };
        if src.size() != var.size() {
            bail!(
                "{}: variable {short:?} has shape {:?}, the network expects {:?} (was the \
                 checkpoint made with another model config?)",
                path.display(),
                src.size(),
                var.size()
            );
        }
        var.f_copy_(src)
            .with_context(|| format!("{}: copying {short:?}", path.display()))?;
    }
    Ok(())
}
