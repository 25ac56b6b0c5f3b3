//! Training's validation and `predict` translate a volume with the same code
//! (`infer::translate`): for the same generator and window, the validator's prediction equals
//! the `Translator`'s bit for bit, so a validation score is the score of what predict writes.
//!
//! Before they shared it, validation padded slices at the bottom and right and predict
//! centred them, so on sizes that are not a multiple of G's `2^depth` the two disagreed near
//! the borders; the volume here has such a size. Both run G on the same tiles and mirrors
//! (`[inference]`) too.

use dataset::manifest::IntensityWindow;
use dataset::store::PreparedDataset;
use infer::predict::{PredictOptions, Translator};
use infer::tiles::Tiling;
use infer::tta::Tta;
use model::config::ModelConfig;
use model::generator::Generator;
use ndarray::s;
use tch::nn::VarStore;
use tch::Device;
use train::validate::Validator;
use volume::{Geometry, Volume};

#[test]
fn validation_prediction_equals_translator_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = PreparedDataset::open(&dataset::fixtures::synthetic_dataset(tmp.path(), 2).unwrap())
        .unwrap();
    // Not the default window, so both sides must take it from where they are told.
    let window = IntensityWindow::new(-1000.0, 1000.0).unwrap();
    let mut validator = Validator::load(&ds, window, 32, 0, true, &Default::default()).unwrap();
    validator.batch_slices = 4;

    tch::manual_seed(7);
    let vs = VarStore::new(Device::Cpu);
    let cfg = ModelConfig::preset("tiny").unwrap();
    let g = Generator::new(&vs.root(), &cfg.generator);
    let m = g.config().size_multiple() as usize;

    // The validation case cropped to a size that is not a multiple of G's: padding matters.
    let case = &validator.cases[0];
    let hu = case.ncct.data.slice(s![.., 1..30, 2..39]).to_owned();
    let (nz, ny, nx) = hu.dim();
    assert!(
        !ny.is_multiple_of(m) && !nx.is_multiple_of(m),
        "{ny} x {nx} should not be a multiple of {m}"
    );

    let translator = Translator {
        generator: &g,
        window,
        device: Device::Cpu,
    };
    let vol = Volume::new(hu.clone(), Geometry::identity([2.5, 2.5, 5.0])).unwrap();
    let mut outputs = Vec::new();
    // whole slices, 16 px tiles of the 32 x 40 padded slices, and both with the mirrors
    let tiles = Some(Tiling::new(2 * m, 0.5, m).unwrap());
    let mirrors = Some(Tta::mirrors(true, true));
    for (tiling, tta) in [
        (None, None),
        (tiles, None),
        (None, mirrors.clone()),
        (tiles, mirrors),
    ] {
        validator.tiling = tiling;
        validator.tta = tta.clone();
        let from_validation = validator.translate(&g, &hu, Device::Cpu).unwrap();
        let opts = PredictOptions {
            batch_size: 4,
            tiles: tiling,
            tta,
            ..PredictOptions::new()
        };
        let from_predict = translator.translate_volume(&vol, &opts, |_| {}).unwrap();

        assert_eq!(from_validation.dim(), (nz, ny, nx));
        let differing = from_validation
            .iter()
            .zip(from_predict.data.iter())
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(
            differing, 0,
            "{tiling:?}, {opts:?}: {differing} voxels differ"
        );
        // A real translation, not a copy of the input (G is random, so the output is not the
        // NCCT).
        assert!(from_validation
            .iter()
            .zip(hu.iter())
            .any(|(a, b)| (a - b).abs() > 1.0));
        outputs.push(from_validation);
    }
    // the tiles and the mirrors were used: G's instance norm sees other statistics on each
    // tile, and a random G is not symmetric
    let off = |a: usize, b: usize| {
        outputs[a]
            .iter()
            .zip(outputs[b].iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max)
    };
    assert!(
        off(0, 1) > 0.1,
        "tiles equal whole slices to {} HU",
        off(0, 1)
    );
    assert!(
        off(0, 2) > 0.1,
        "mirrors equal one pass to {} HU",
        off(0, 2)
    );
    assert!(
        off(1, 3) > 0.1,
        "mirrored tiles equal tiles to {} HU",
        off(1, 3)
    );
}
