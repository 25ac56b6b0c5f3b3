//! The static anatomy of one phantom patient: a parametric chest in anatomical millimetres
//! (LPS axes, origin near the carina), classified voxel by voxel into [`Tissue`]s, plus the
//! large tubular structures (aorta, venae cavae, pulmonary trunk, airways, oesophagus,
//! clavicles) that are painted over the tissue map.
//!
//! Shapes are deliberately simple (superellipses, ellipsoids, paraboloid diaphragm domes,
//! spline tubes) but placed where a radiologist expects them, with per-patient variation of
//! size, fat, heart position and diaphragm height drawn from the case's random stream.

use super::shapes::{smoothstep, spline_tubes, Ellipsoid, Tube, V3};
use super::tissue::{Tissue, TubeClass};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::f64::consts::PI;

/// A tube to paint, and whether the mediastinum (not lung) surrounds it.
#[derive(Debug, Clone, Copy)]
pub struct PaintTube {
    pub class: TubeClass,
    pub tube: Tube,
    /// Mediastinal structures push the lungs away by [`MEDIASTINAL_MARGIN_MM`].
    pub mediastinal: bool,
}

/// Fat rim kept between mediastinal tubes and the lungs, mm.
pub const MEDIASTINAL_MARGIN_MM: f64 = 5.0;

const SKIN_MM: f64 = 2.0;
const RIB_BAND_MM: f64 = 12.0;
const N_RIBS: usize = 12;

/// Per-patient anatomical parameters (all mm, anatomical frame).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Anatomy {
    /// Half width (left-right) of the body outline.
    pub body_half_width: f64,
    /// Half depth (antero-posterior) of the body outline.
    pub body_half_depth: f64,
    /// Antero-posterior centre of the body outline.
    pub body_center_y: f64,
    /// Subcutaneous fat thickness.
    pub fat_mm: f64,
    /// Chest-wall muscle thickness.
    pub muscle_mm: f64,
    /// Height of the lung apices.
    pub apex_z: f64,
    /// Top of the right and left diaphragm domes.
    pub dome_right_z: f64,
    pub dome_left_z: f64,
    /// Heart displacement and scale relative to the template.
    pub heart_shift: V3,
    pub heart_scale: f64,
    /// Antero-posterior centre of the vertebral bodies and their radius.
    pub spine_y: f64,
    pub vertebra_radius: f64,
    /// Height of the first rib's head and the spacing of the ribs.
    pub rib_top_z: f64,
    pub rib_spacing: f64,
    /// Air gap between the patient's back and the table.
    pub table_gap: f64,
    /// Seed of the parenchymal and fat textures.
    pub texture_seed: u64,
}

/// The cardiac chambers of one patient.
#[derive(Debug, Clone, Copy)]
pub struct Heart {
    lv: Ellipsoid,
    lv_myo: Ellipsoid,
    rv: Ellipsoid,
    rv_myo: Ellipsoid,
    ra: Ellipsoid,
    ra_wall: Ellipsoid,
    la: Ellipsoid,
    la_wall: Ellipsoid,
}

impl Anatomy {
    /// Draws a patient.
    pub fn sample(rng: &mut impl Rng) -> Self {
        let dome_right_z = rng.gen_range(-92.0..-78.0);
        let body_half_depth = rng.gen_range(106.0..120.0);
        let body_center_y = rng.gen_range(12.0..18.0);
        Self {
            body_half_width: rng.gen_range(148.0..172.0),
            body_half_depth,
            body_center_y,
            fat_mm: rng.gen_range(7.0..20.0),
            muscle_mm: rng.gen_range(7.0..12.0),
            apex_z: rng.gen_range(80.0..92.0),
            dome_right_z,
            dome_left_z: dome_right_z - rng.gen_range(8.0..20.0),
            heart_shift: [
                rng.gen_range(-5.0..5.0),
                rng.gen_range(-4.0..4.0),
                rng.gen_range(-6.0..6.0),
            ],
            heart_scale: rng.gen_range(0.92..1.08),
            spine_y: body_center_y + body_half_depth - rng.gen_range(68.0..74.0),
            vertebra_radius: rng.gen_range(18.0..22.0),
            rib_top_z: rng.gen_range(100.0..110.0),
            rib_spacing: rng.gen_range(23.0..26.0),
            table_gap: rng.gen_range(4.0..12.0),
            texture_seed: rng.gen(),
        }
    }

    /// Subcutaneous fat and muscle thickness at angle `angle` from the posterior midline:
    /// more fat at the flanks, pectoral muscles in front, latissimus and back muscles behind.
    fn wall_layers(&self, angle: f64) -> (f64, f64) {
        let bump = |c: f64, w: f64| (-((angle - c * PI) / (w * PI)).powi(2)).exp();
        let fat = self.fat_mm * (0.75 + 0.6 * bump(0.5, 0.2));
        let muscle = self.muscle_mm * (0.8 + 0.9 * bump(0.78, 0.12) + 0.6 * bump(0.3, 0.15));
        (fat, muscle)
    }

    /// Body outline scale along z: the chest narrows towards the neck.
    fn outline_scale(&self, z: f64) -> f64 {
        1.0 - 0.12 * smoothstep(40.0, 140.0, z)
    }

    /// Depth of `(x, y)` below the skin measured along the ray from the body centre, and the
    /// angle from the posterior midline (0 = back, π = front). Negative depth: outside.
    pub fn depth_and_angle(&self, p: V3) -> (f64, f64) {
        let s = self.outline_scale(p[2]);
        let (a, b) = (self.body_half_width * s, self.body_half_depth * s);
        let dx = p[0];
        let dy = p[1] - self.body_center_y;
        // Flatter back (lying on the table), rounder front.
        let n = if dy > 0.0 { 2.7 } else { 2.05 };
        let rho = ((dx.abs() / a).powf(n) + (dy.abs() / b).powf(n)).powf(1.0 / n);
        let r = (dx * dx + dy * dy).sqrt();
        let depth = if rho > 1e-9 { r / rho - r } else { a.min(b) };
        let angle = (dx.abs() / a).atan2(dy / b);
        (depth, angle)
    }

    /// The diaphragm's height under `(x, y)`: two paraboloid domes, deeper behind
    /// (posterior costophrenic recesses) and at the sides.
    pub fn diaphragm_z(&self, x: f64, y: f64) -> f64 {
        let dy = y - (self.body_center_y - 20.0);
        let ky = if dy > 0.0 { 75.0 } else { 30.0 };
        let dome = |top: f64, cx: f64| {
            top - 50.0 * ((x - cx) / 110.0).powi(2) - ky * (dy / self.body_half_depth).powi(2)
        };
        dome(self.dome_right_z, -60.0).max(dome(self.dome_left_z, 60.0))
    }

    /// The cardiac chambers, placed by the patient's heart shift and scale.
    pub fn heart(&self) -> Heart {
        let hc = [22.0, -30.0, -62.0];
        let s = self.heart_scale;
        let place = |rel: V3, r: V3, yaw: f64| {
            Ellipsoid::new(
                [
                    hc[0] + s * rel[0] + self.heart_shift[0],
                    hc[1] + s * rel[1] + self.heart_shift[1],
                    hc[2] + s * rel[2] + self.heart_shift[2],
                ],
                [r[0] * s, r[1] * s, r[2] * s],
                yaw,
            )
        };
        let lv = place([20.0, 6.0, -8.0], [28.0, 22.0, 34.0], 0.6);
        let rv = place([-12.0, -20.0, -6.0], [40.0, 15.0, 30.0], 0.45);
        let ra = place([-52.0, 0.0, 2.0], [21.0, 23.0, 28.0], 0.0);
        let la = place([-14.0, 34.0, 24.0], [30.0, 15.0, 18.0], 0.1);
        Heart {
            lv,
            lv_myo: lv.grown(11.0),
            rv,
            rv_myo: rv.grown(4.0),
            ra,
            ra_wall: ra.grown(2.5),
            la,
            la_wall: la.grown(2.5),
        }
    }

    /// Where the pulmonary arteries enter each lung (right, left) and the four pulmonary
    /// vein ostia on the left atrium (right superior, right inferior, left superior, left
    /// inferior).
    pub fn right_hilum(&self) -> V3 {
        [-48.0, 0.0, -15.0]
    }
    pub fn left_hilum(&self) -> V3 {
        [52.0, 8.0, -5.0]
    }
    pub fn vein_ostia(&self) -> [V3; 4] {
        let la = self.heart().la;
        let c = la.center;
        [
            [c[0] - 26.0, c[1] + 4.0, c[2] + 6.0],
            [c[0] - 24.0, c[1] + 8.0, c[2] - 10.0],
            [c[0] + 26.0, c[1] + 4.0, c[2] + 6.0],
            [c[0] + 24.0, c[1] + 8.0, c[2] - 10.0],
        ]
    }

    /// The large tubes: aorta and arch branches, venae cavae, pulmonary trunk and main
    /// arteries, trachea and main bronchi, oesophagus, clavicles.
    pub fn tubes(&self) -> Vec<PaintTube> {
        let mut out = Vec::new();
        let mut add = |class, pts: &[V3], radii: &[f64], mediastinal| {
            for tube in spline_tubes(pts, radii, 4.0) {
                out.push(PaintTube {
                    class,
                    tube,
                    mediastinal,
                });
            }
        };
        let heart = self.heart();
        let (lv, rv, ra) = (heart.lv.center, heart.rv.center, heart.ra.center);
        let sy = self.spine_y;
        // Aorta: root at the left ventricle's outflow, ascending, arch, descending left of
        // the spine.
        let root = [lv[0] - 22.0, lv[1] - 2.0, lv[2] + 22.0];
        add(
            TubeClass::Aorta,
            &[
                root,
                [2.0, -36.0, -15.0],
                [-2.0, -34.0, 20.0],
                [5.0, -14.0, 44.0],
                [24.0, 12.0, 44.0],
                [25.0, sy - 30.0, 28.0],
                [24.0, sy - 32.0, 0.0],
                [22.0, sy - 30.0, -60.0],
                [15.0, sy - 32.0, -130.0],
                [8.0, sy - 36.0, -175.0],
            ],
            &[13.0, 15.0, 14.0, 13.0, 12.0, 12.0, 11.5, 11.0, 10.5, 10.0],
            true,
        );
        // Arch branches: brachiocephalic trunk, left common carotid, left subclavian.
        add(
            TubeClass::Aorta,
            &[
                [1.0, -22.0, 48.0],
                [-10.0, -22.0, 80.0],
                [-18.0, -18.0, 135.0],
            ],
            &[6.5, 6.0, 5.0],
            true,
        );
        add(
            TubeClass::Aorta,
            &[
                [10.0, -12.0, 50.0],
                [14.0, -12.0, 90.0],
                [20.0, -8.0, 135.0],
            ],
            &[4.5, 4.0, 4.0],
            true,
        );
        add(
            TubeClass::Aorta,
            &[
                [20.0, 6.0, 50.0],
                [32.0, 8.0, 90.0],
                [60.0, 0.0, 112.0],
                [95.0, -10.0, 118.0],
            ],
            &[5.5, 5.0, 5.0, 5.0],
            true,
        );
        // Superior vena cava from the brachiocephalic confluence into the right atrium, and
        // the brachiocephalic veins (the left one crosses in front of the arch branches).
        add(
            TubeClass::SystemicVein,
            &[
                [-24.0, -20.0, 72.0],
                [-26.0, -20.0, 20.0],
                [ra[0] + 2.0, ra[1] - 2.0, ra[2] + 26.0],
            ],
            &[9.0, 10.0, 11.0],
            true,
        );
        add(
            TubeClass::SystemicVein,
            &[
                [80.0, -30.0, 105.0],
                [40.0, -34.0, 92.0],
                [-5.0, -30.0, 80.0],
                [-24.0, -20.0, 72.0],
            ],
            &[6.0, 6.0, 6.0, 7.0],
            true,
        );
        add(
            TubeClass::SystemicVein,
            &[
                [-70.0, -25.0, 115.0],
                [-40.0, -22.0, 95.0],
                [-24.0, -20.0, 72.0],
            ],
            &[6.5, 7.0, 8.0],
            true,
        );
        // Pulmonary trunk from the right ventricular outflow tract to the bifurcation, then
        // the right pulmonary artery (behind the ascending aorta and SVC) and the left one
        // (arching over the left main bronchus).
        let bif = [14.0, -22.0, -6.0];
        add(
            TubeClass::PulmonaryArtery,
            &[
                [rv[0] + 10.0, rv[1] - 2.0, rv[2] + 20.0],
                [20.0, -46.0, -28.0],
                bif,
            ],
            &[14.0, 14.0, 13.0],
            true,
        );
        add(
            TubeClass::PulmonaryArtery,
            &[
                bif,
                [-6.0, -12.0, -8.0],
                [-30.0, -6.0, -12.0],
                self.right_hilum(),
            ],
            &[11.0, 10.5, 10.0, 9.0],
            true,
        );
        add(
            TubeClass::PulmonaryArtery,
            &[bif, [32.0, -10.0, 2.0], self.left_hilum()],
            &[11.0, 10.0, 9.0],
            true,
        );
        // Trachea, carina, main bronchi: a soft-tissue wall under the air lumen.
        let carina = [0.0, 8.0, 4.0];
        let trachea = [[0.0, 0.0, 140.0], [0.0, 3.0, 70.0], carina];
        let right_mb = [carina, [-24.0, 10.0, -10.0], [-44.0, 12.0, -26.0]];
        let left_mb = [carina, [26.0, 12.0, -14.0], [48.0, 16.0, -30.0]];
        add(TubeClass::AirwayWall, &trachea, &[11.0, 11.0, 10.0], true);
        add(TubeClass::Airway, &trachea, &[9.0, 9.0, 8.0], true);
        add(TubeClass::AirwayWall, &right_mb, &[9.0, 8.5, 7.0], false);
        add(TubeClass::Airway, &right_mb, &[7.0, 6.5, 5.0], false);
        add(TubeClass::AirwayWall, &left_mb, &[8.5, 8.0, 6.5], false);
        add(TubeClass::Airway, &left_mb, &[6.5, 6.0, 4.5], false);
        // Oesophagus between trachea and spine, drifting left towards the hiatus.
        add(
            TubeClass::Esophagus,
            &[
                [-2.0, sy - 34.0, 140.0],
                [2.0, sy - 33.0, 40.0],
                [6.0, sy - 32.0, -40.0],
                [14.0, sy - 40.0, -110.0],
                [30.0, sy - 62.0, -150.0],
            ],
            &[7.5, 8.0, 8.0, 8.0, 9.0],
            true,
        );
        // Clavicles at the top of the chest, in front of the apices.
        let cy = self.body_center_y - self.body_half_depth * 0.78;
        for side in [-1.0, 1.0] {
            add(
                TubeClass::Bone,
                &[
                    [side * 14.0, cy, 118.0],
                    [side * 60.0, cy + 4.0, 124.0],
                    [side * 120.0, cy + 30.0, 132.0],
                ],
                &[7.0, 6.0, 7.0],
                false,
            );
        }
        out
    }

    /// The tissue at `p`; `in_mediastinum` tells whether `p` lies within the margin of a
    /// mediastinal tube (see [`PaintTube::mediastinal`]), which the caller rasterises.
    pub fn classify(&self, p: V3, heart: &Heart, in_mediastinum: bool) -> Tissue {
        let [x, y, z] = p;
        let (depth, angle) = self.depth_and_angle(p);
        if depth < 0.0 {
            return self.outside(x, y);
        }
        if depth < SKIN_MM {
            return Tissue::Skin;
        }
        let (fat, muscle) = self.wall_layers(angle);
        if depth >= SKIN_MM + fat {
            if let Some(t) = self.spine(x, y, z) {
                return t;
            }
        }
        if depth < SKIN_MM + fat {
            return Tissue::Fat;
        }
        let wall = SKIN_MM + fat + muscle;
        if depth < wall {
            // Scapulae: thin bony plates in the posterior chest-wall muscles, upper half.
            let rel = (depth - SKIN_MM - fat) / muscle;
            if z > 0.0
                && z < 110.0
                && (0.2 * PI..0.42 * PI).contains(&angle)
                && (0.3..0.6).contains(&rel)
            {
                return Tissue::CorticalBone;
            }
            return Tissue::Muscle;
        }
        if depth < wall + RIB_BAND_MM {
            return self.rib_band(depth - wall, angle, x, z);
        }
        // Inside the thoracic cavity.
        if let Some(t) = heart.classify(p) {
            return t;
        }
        if z < self.diaphragm_z(x, y) {
            return self.abdomen(p);
        }
        if in_mediastinum || (x - 2.0).abs() < 7.0 {
            return Tissue::MediastinalFat;
        }
        // The lungs taper towards their apices.
        let t = smoothstep(self.apex_z - 50.0, self.apex_z, z);
        let inset = 110.0 * t * t;
        if depth < wall + RIB_BAND_MM + inset || z > self.apex_z {
            return if t > 0.0 {
                Tissue::Muscle
            } else {
                Tissue::MediastinalFat
            };
        }
        Tissue::Lung
    }

    fn outside(&self, x: f64, y: f64) -> Tissue {
        // A cradle-shaped table under the patient's back.
        let top = self.body_center_y + self.body_half_depth + self.table_gap - 0.0006 * x * x;
        let d = y - top;
        if x.abs() > 230.0 || !(0.0..30.0).contains(&d) {
            Tissue::Air
        } else if !(3.0..=27.0).contains(&d) {
            Tissue::TableShell
        } else {
            Tissue::TableCore
        }
    }

    fn spine(&self, x: f64, y: f64, z: f64) -> Option<Tissue> {
        let r = self.vertebra_radius;
        let sy = self.spine_y;
        let d2 = x * x + (y - sy).powi(2);
        if d2 < r * r {
            // Vertebral bodies with intervertebral discs every ~27 mm.
            let level = (z - 3.0).rem_euclid(27.0);
            if level < 5.0 {
                return Some(Tissue::Disc);
            }
            return Some(if d2 > (r - 2.5).powi(2) {
                Tissue::CorticalBone
            } else {
                Tissue::CancellousBone
            });
        }
        let canal_y = sy + r + 9.0;
        let dc = (x * x + (y - canal_y).powi(2)).sqrt();
        if dc < 8.0 {
            return Some(Tissue::SpinalCanal);
        }
        let level = (z - 3.0).rem_euclid(27.0);
        // Pedicles and laminae around the canal, spinous and transverse processes.
        if dc < 13.0 && y > sy + r - 4.0 {
            return Some(Tissue::CorticalBone);
        }
        if x.abs() < 4.0 && y > canal_y && y < canal_y + 32.0 && (6.0..22.0).contains(&level) {
            return Some(Tissue::CorticalBone);
        }
        if x.abs() < 34.0 && (y - canal_y).abs() < 5.0 && (8.0..20.0).contains(&level) {
            return Some(Tissue::CorticalBone);
        }
        // Paraspinal muscles.
        if ((x.abs() - 27.0) / 22.0).powi(2) + ((y - canal_y - 10.0) / 19.0).powi(2) < 1.0 {
            return Some(Tissue::Muscle);
        }
        None
    }

    fn rib_band(&self, d: f64, angle: f64, x: f64, z: f64) -> Tissue {
        let frac = angle / PI;
        // Sternum at the front.
        if x.abs() < 16.0 && frac > 0.9 && (-95.0..75.0).contains(&z) {
            return if !(2.5..9.5).contains(&d) {
                Tissue::CorticalBone
            } else {
                Tissue::CancellousBone
            };
        }
        for k in 0..N_RIBS {
            // Ribs run down from the spine towards the front.
            let zk = self.rib_top_z - k as f64 * self.rib_spacing - 95.0 * frac.powf(1.1);
            let dz = z - zk;
            if dz.abs() > 8.0 {
                continue;
            }
            let end = if k < 7 {
                0.8
            } else {
                0.8 - 0.07 * (k as f64 - 6.0)
            };
            let cartilage_end = if k < 7 { 0.93 } else { end };
            if frac < 0.06 || frac > cartilage_end {
                continue;
            }
            let level = ((d - 6.0) / 4.5).powi(2) + (dz / 5.0).powi(2);
            if level < 1.0 {
                if frac > end {
                    return Tissue::Cartilage;
                }
                return if level > 0.45 {
                    Tissue::CorticalBone
                } else {
                    Tissue::CancellousBone
                };
            }
        }
        Tissue::Muscle
    }

    fn abdomen(&self, p: V3) -> Tissue {
        let [x, y, z] = p;
        // Stomach under the left dome with an air-fluid level (supine: air anterior).
        let stomach = Ellipsoid::new(
            [60.0, -15.0, self.dome_left_z - 35.0],
            [38.0, 32.0, 26.0],
            0.3,
        );
        if stomach.contains(p) {
            return if y < -18.0 {
                Tissue::GastricAir
            } else {
                Tissue::GastricFluid
            };
        }
        if x < 30.0 - 0.25 * (z - self.dome_right_z) {
            Tissue::Liver
        } else {
            Tissue::Abdomen
        }
    }

    /// Whether `p` is lung parenchyma well inside the lung (at least `margin` mm from any
    /// other tissue along the axes): where the vessel trees aim their branches.
    pub fn deep_in_lung(&self, p: V3, heart: &Heart, tubes: &[PaintTube], margin: f64) -> bool {
        let offsets = [
            [0.0, 0.0, 0.0],
            [margin, 0.0, 0.0],
            [-margin, 0.0, 0.0],
            [0.0, margin, 0.0],
            [0.0, -margin, 0.0],
            [0.0, 0.0, margin],
            [0.0, 0.0, -margin],
        ];
        offsets.iter().all(|o| {
            let q = [p[0] + o[0], p[1] + o[1], p[2] + o[2]];
            let med = tubes
                .iter()
                .any(|t| t.mediastinal && t.tube.depth(q) < MEDIASTINAL_MARGIN_MM);
            self.classify(q, heart, med) == Tissue::Lung
        })
    }
}

impl Heart {
    /// The cardiac tissue at `p`, or `None` outside the heart and its fat rim.
    pub fn classify(&self, p: V3) -> Option<Tissue> {
        if self.lv.contains(p) {
            return Some(Tissue::LeftVentricle);
        }
        if self.lv_myo.contains(p) {
            return Some(Tissue::Myocardium);
        }
        if self.rv.contains(p) {
            return Some(Tissue::RightVentricle);
        }
        if self.ra.contains(p) {
            return Some(Tissue::RightAtrium);
        }
        if self.la.contains(p) {
            return Some(Tissue::LeftAtrium);
        }
        if self.rv_myo.contains(p) || self.ra_wall.contains(p) || self.la_wall.contains(p) {
            return Some(Tissue::Myocardium);
        }
        let fat = 6.0;
        if self.lv_myo.grown(fat).contains(p)
            || self.rv_myo.grown(fat).contains(p)
            || self.ra_wall.grown(fat).contains(p)
            || self.la_wall.grown(fat).contains(p)
        {
            return Some(Tissue::MediastinalFat);
        }
        None
    }

    /// Centre of the left atrium.
    pub fn left_atrium(&self) -> V3 {
        self.la.center
    }
}
