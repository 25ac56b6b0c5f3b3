//! Honest validation (#16 item 5): on a phantom whose CTPA moved by up to 10 mm against the
//! NCCT (prepared without pre-alignment), the validator registers each CTPA onto its NCCT
//! (demons) and scores against that too. The NCCT, which lies on its own anatomy, must then
//! score far closer to the registered CTPA than to the moved one, and the registered scores
//! must track the phantom's aligned truth, which the validator never sees.

use dataset::manifest::{AlignMode, SplitFractions};
use dataset::phantom::{write_dataset, PhantomConfig, WriteOptions};
use dataset::prepare::{prepare, PrepareOptions, SplitChoice};
use dataset::store::PreparedDataset;
use metrics::{score_regions, ScoreConfig};
use train::validate::Validator;

/// A 2-case phantom with up to 10 mm of motion, prepared without pre-alignment (one
/// validation case): the raw folder (with the aligned truth) and the prepared dataset.
fn moved_phantom(tmp: &std::path::Path) -> (std::path::PathBuf, PreparedDataset) {
    let (raw, prepared) = (tmp.join("raw"), tmp.join("prepared"));
    let cfg = PhantomConfig {
        seed: 9,
        misalignment_mm: 10.0,
        ..PhantomConfig::default()
    };
    let opts = WriteOptions {
        cases: 2,
        overwrite: false,
        preview: false,
    };
    write_dataset(&raw, &cfg, &opts, &|_| {}).unwrap();
    let mut popts = PrepareOptions {
        split: SplitChoice::Seeded {
            seed: 0,
            fractions: SplitFractions([0.5, 0.5, 0.0]),
        },
        ..PrepareOptions::default()
    };
    popts.settings.align = AlignMode::None;
    let discovery = dataset::raw::discover(&raw).unwrap();
    prepare(&discovery, &prepared, &popts, &|_| {}).unwrap();
    (raw, PreparedDataset::open(&prepared).unwrap())
}

#[test]
fn registered_scores_undo_the_motion_the_plain_ones_reward() {
    let tmp = tempfile::tempdir().unwrap();
    let (raw, ds) = moved_phantom(tmp.path());
    let window = ds.window();

    let plain = Validator::load(&ds, window, 16, 0, false, &Default::default()).unwrap();
    assert!(plain.baseline.mae_body_reg.is_none());
    assert!(plain.registered.iter().all(Option::is_none));

    let v = Validator::load(&ds, window, 16, 0, true, &Default::default()).unwrap();
    let b = v.baseline;
    let (moved, registered) = (b.mae_body.unwrap(), b.mae_body_reg.unwrap());
    assert_eq!(Some(moved), plain.baseline.mae_body);
    assert!(
        registered < 0.8 * moved,
        "NCCT body MAE against the moved CTPA {moved:.1} HU, against the registered one \
         {registered:.1} HU"
    );

    // The registered CTPA is closer to the phantom's aligned truth than the moved one.
    let case = &v.cases[0];
    let truth =
        volume::io::read_volume(&raw.join(format!("truth/ctpa_aligned/{}.nii.gz", case.name)))
            .unwrap();
    assert_eq!(truth.data.dim(), case.ctpa.data.dim());
    let score = |a: &ndarray::Array3<f32>| {
        score_regions(
            a.view(),
            truth.data.view(),
            &[case.body.data.view()],
            &ScoreConfig::default(),
        )
        .unwrap()[0]
            .mae
            .unwrap()
    };
    let (to_moved, to_registered) = (
        score(&case.ctpa.data),
        score(v.registered[0].as_ref().unwrap()),
    );
    eprintln!(
        "NCCT vs moved CTPA {moved:.1} HU, vs registered {registered:.1} HU; against the aligned \
         truth: moved {to_moved:.1} HU, registered {to_registered:.1} HU"
    );
    assert!(
        to_registered < 0.8 * to_moved,
        "body MAE against the aligned truth: moved CTPA {to_moved:.1} HU, registered \
         {to_registered:.1} HU"
    );
}

/// `mae_contrast` scores the enhancement, which the body score barely sees: against the moved
/// CTPA, the aligned truth (every vessel enhanced, on the NCCT's anatomy) and the NCCT (no
/// enhancement) both pay for the motion, but the enhancement gains the truth more than twice
/// as many HU inside the contrast region as in the body; the NCCT baseline's `mae_contrast`
/// is that region's MAE.
#[test]
fn the_contrast_score_sees_the_enhancement_the_body_score_misses() {
    let tmp = tempfile::tempdir().unwrap();
    let (raw, ds) = moved_phantom(tmp.path());
    let v = Validator::load(&ds, ds.window(), 16, 0, false, &Default::default()).unwrap();
    let case = &v.cases[0];
    let region = &v.contrast[0];
    let voxels = region.iter().filter(|&&r| r != 0).count();
    assert!(voxels > 100, "contrast region of {voxels} voxels");
    let truth =
        volume::io::read_volume(&raw.join(format!("truth/ctpa_aligned/{}.nii.gz", case.name)))
            .unwrap();
    let score = |pred: &ndarray::Array3<f32>| {
        let r = score_regions(
            pred.view(),
            case.ctpa.data.view(),
            &[case.body.data.view(), region.view()],
            &ScoreConfig::default(),
        )
        .unwrap();
        (r[0].mae.unwrap(), r[1].mae.unwrap())
    };
    let ((ncct_body, ncct_contrast), (truth_body, truth_contrast)) =
        (score(&case.ncct.data), score(&truth.data));
    eprintln!(
        "against the moved CTPA: NCCT body {ncct_body:.1} / contrast {ncct_contrast:.1} HU, \
         aligned truth body {truth_body:.1} / contrast {truth_contrast:.1} HU"
    );
    assert_eq!(v.baseline.mae_contrast, Some(ncct_contrast));
    // measured 127.1 -> 88.4 HU in the region, 80.2 -> 69.2 HU in the body
    assert!(
        truth_contrast < 0.8 * ncct_contrast,
        "contrast: truth {truth_contrast:.1} HU, NCCT {ncct_contrast:.1} HU"
    );
    assert!(
        ncct_contrast - truth_contrast > 2.0 * (ncct_body - truth_body),
        "the enhancement moves the contrast score {:.1} HU, the body score {:.1} HU",
        ncct_contrast - truth_contrast,
        ncct_body - truth_body
    );
}
