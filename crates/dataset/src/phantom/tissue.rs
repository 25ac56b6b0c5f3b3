//! Tissues of the phantom and their attenuation (HU) in the two acquisitions.
//!
//! Values follow textbook chest CT: air −1000, lung about −850, fat about −100, muscle and
//! unenhanced blood about 40–50, cancellous bone a few hundred, cortical bone near 1000. In the
//! CTPA (bolus timed for the pulmonary arteries) the superior vena cava holds undiluted
//! contrast, the right heart and pulmonary arteries 300–450 HU, the pulmonary veins, left heart
//! and aorta less (150–250), and the myocardium and liver enhance a little.

use rand::Rng;
use serde::{Deserialize, Serialize};

/// The tissue of a voxel before tubes (vessels, airways) are painted over it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Tissue {
    Air,
    TableShell,
    TableCore,
    Skin,
    Fat,
    Muscle,
    MediastinalFat,
    Lung,
    CorticalBone,
    CancellousBone,
    Cartilage,
    SpinalCanal,
    Disc,
    Myocardium,
    RightAtrium,
    RightVentricle,
    LeftAtrium,
    LeftVentricle,
    Liver,
    Abdomen,
    GastricAir,
    GastricFluid,
}

impl Tissue {
    /// Blood pools (cardiac chambers).
    pub fn is_blood(self) -> bool {
        matches!(
            self,
            Tissue::RightAtrium
                | Tissue::RightVentricle
                | Tissue::LeftAtrium
                | Tissue::LeftVentricle
        )
    }

    /// Inside the patient (not outside air, not the table).
    pub fn is_body(self) -> bool {
        !matches!(self, Tissue::Air | Tissue::TableShell | Tissue::TableCore)
    }
}

/// Structures drawn as tubes over the tissue map, in painting order (later wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum TubeClass {
    Esophagus,
    AirwayWall,
    Airway,
    Bone,
    Aorta,
    SystemicVein,
    PulmonaryVein,
    PulmonaryArtery,
    Embolus,
}

impl TubeClass {
    pub const COUNT: usize = 9;
    pub const ALL: [TubeClass; Self::COUNT] = [
        TubeClass::Esophagus,
        TubeClass::AirwayWall,
        TubeClass::Airway,
        TubeClass::Bone,
        TubeClass::Aorta,
        TubeClass::SystemicVein,
        TubeClass::PulmonaryVein,
        TubeClass::PulmonaryArtery,
        TubeClass::Embolus,
    ];

    /// Whether the tube's lumen is blood.
    pub fn is_blood(self) -> bool {
        matches!(
            self,
            TubeClass::Aorta
                | TubeClass::SystemicVein
                | TubeClass::PulmonaryVein
                | TubeClass::PulmonaryArtery
        )
    }
}

/// Which scan a HU value is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    Ncct,
    Ctpa,
}

/// Per-case attenuation of blood and enhancing tissue: drawn once per case, so contrast
/// timing and haematocrit vary between patients like they do in a real cohort.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Contrast {
    /// Unenhanced blood (NCCT), HU.
    pub blood_ncct: f32,
    /// Thrombus, NCCT (acute clot is slightly denser than blood), HU.
    pub embolus_ncct: f32,
    /// Thrombus, CTPA (does not enhance), HU.
    pub embolus_ctpa: f32,
    /// Superior vena cava and brachiocephalic veins in the CTPA (undiluted contrast), HU.
    pub svc_ctpa: f32,
    /// Right atrium and ventricle, CTPA, HU.
    pub right_heart_ctpa: f32,
    /// Pulmonary trunk and arteries, CTPA, HU.
    pub pulmonary_artery_ctpa: f32,
    /// Pulmonary veins, left atrium and ventricle, CTPA, HU.
    pub left_heart_ctpa: f32,
    /// Aorta, CTPA, HU.
    pub aorta_ctpa: f32,
}

impl Contrast {
    pub fn sample(rng: &mut impl Rng) -> Self {
        let pa = rng.gen_range(320.0..430.0);
        let left = rng.gen_range(160.0..240.0);
        Self {
            blood_ncct: rng.gen_range(35.0..48.0),
            embolus_ncct: rng.gen_range(50.0..62.0),
            embolus_ctpa: rng.gen_range(30.0..60.0),
            svc_ctpa: rng.gen_range(500.0..800.0),
            right_heart_ctpa: pa * rng.gen_range(0.9..1.0),
            pulmonary_artery_ctpa: pa,
            left_heart_ctpa: left,
            aorta_ctpa: left * rng.gen_range(0.85..0.97),
        }
    }

    /// Mean HU of a tissue (texture is added separately).
    pub fn tissue_hu(&self, t: Tissue, phase: Scan) -> f32 {
        let ctpa = phase == Scan::Ctpa;
        match t {
            Tissue::Air => -1000.0,
            Tissue::TableShell => 180.0,
            Tissue::TableCore => -880.0,
            Tissue::Skin => 30.0,
            Tissue::Fat => -105.0,
            Tissue::Muscle => {
                if ctpa {
                    58.0
                } else {
                    50.0
                }
            }
            Tissue::MediastinalFat => -90.0,
            Tissue::Lung => -860.0,
            Tissue::CorticalBone => 950.0,
            Tissue::CancellousBone => 250.0,
            Tissue::Cartilage => 110.0,
            Tissue::SpinalCanal => 25.0,
            Tissue::Disc => 85.0,
            Tissue::Myocardium => {
                if ctpa {
                    95.0
                } else {
                    48.0
                }
            }
            Tissue::RightAtrium | Tissue::RightVentricle => {
                if ctpa {
                    self.right_heart_ctpa
                } else {
                    self.blood_ncct
                }
            }
            Tissue::LeftAtrium | Tissue::LeftVentricle => {
                if ctpa {
                    self.left_heart_ctpa
                } else {
                    self.blood_ncct
                }
            }
            Tissue::Liver => {
                if ctpa {
                    75.0
                } else {
                    58.0
                }
            }
            Tissue::Abdomen => {
                if ctpa {
                    50.0
                } else {
                    38.0
                }
            }
            Tissue::GastricAir => -1000.0,
            Tissue::GastricFluid => 15.0,
        }
    }

    /// HU of the lumen (or wall) of a tube class.
    pub fn tube_hu(&self, c: TubeClass, phase: Scan) -> f32 {
        let ctpa = phase == Scan::Ctpa;
        let blood = |enhanced: f32| if ctpa { enhanced } else { self.blood_ncct };
        match c {
            TubeClass::Esophagus => 40.0,
            TubeClass::AirwayWall => 35.0,
            TubeClass::Airway => -1000.0,
            TubeClass::Bone => 700.0,
            TubeClass::Aorta => blood(self.aorta_ctpa),
            TubeClass::SystemicVein => blood(self.svc_ctpa),
            TubeClass::PulmonaryVein => blood(self.left_heart_ctpa),
            TubeClass::PulmonaryArtery => blood(self.pulmonary_artery_ctpa),
            TubeClass::Embolus => {
                if ctpa {
                    self.embolus_ctpa
                } else {
                    self.embolus_ncct
                }
            }
        }
    }
}
