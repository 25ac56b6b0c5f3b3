//! Accumulators in MONAI's style: [`Cumulative::update`] per case (or batch),
//! [`Cumulative::aggregate`] for the summary, [`Cumulative::reset`] to start over.
//!
//! Values are kept (not just running sums) because the median is part of every summary: case
//! scores of synthesis models are skewed by a few failures, and papers report both.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Collects per-case values of one metric.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Cumulative {
    values: Vec<f64>,
}

impl Cumulative {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one value (non-finite values are kept and show in the summary: a `+inf` PSNR of
    /// identical images makes the mean `+inf`, which is the truth).
    pub fn update(&mut self, value: f64) {
        self.values.push(value);
    }

    /// Adds several values.
    pub fn extend(&mut self, values: impl IntoIterator<Item = f64>) {
        self.values.extend(values);
    }

    /// The values so far, in the order added.
    pub fn values(&self) -> &[f64] {
        &self.values
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Forgets all values.
    pub fn reset(&mut self) {
        self.values.clear();
    }

    /// Mean, sample standard deviation, median, min and max of the values so far.
    pub fn aggregate(&self) -> Summary {
        Summary::of(&self.values)
    }
}

/// Statistics of a set of per-case values. Undefined statistics are NaN (all of them for
/// `n = 0`, `sd` for `n = 1`); in JSON, non-finite numbers are written as the strings
/// `"NaN"`, `"inf"`, `"-inf"` (JSON has no literal for them).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub n: usize,
    #[serde(with = "json_f64")]
    pub mean: f64,
    /// Sample standard deviation (`n - 1` in the denominator), as papers report.
    #[serde(with = "json_f64")]
    pub sd: f64,
    #[serde(with = "json_f64")]
    pub median: f64,
    #[serde(with = "json_f64")]
    pub min: f64,
    #[serde(with = "json_f64")]
    pub max: f64,
}

impl Summary {
    /// Summary of `values`.
    pub fn of(values: &[f64]) -> Self {
        let n = values.len();
        if n == 0 {
            return Self {
                n,
                mean: f64::NAN,
                sd: f64::NAN,
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
            };
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let sd = if n > 1 {
            (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            f64::NAN
        };
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            0.5 * (sorted[n / 2 - 1] + sorted[n / 2])
        };
        Self {
            n,
            mean,
            sd,
            median,
            min: sorted[0],
            max: sorted[n - 1],
        }
    }
}

/// Serde for `f64` that keeps non-finite values as strings.
mod json_f64 {
    use super::*;

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else if v.is_nan() {
            s.serialize_str("NaN")
        } else if *v > 0.0 {
            s.serialize_str("inf")
        } else {
            s.serialize_str("-inf")
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Num(f64),
        Str(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        match Repr::deserialize(d)? {
            Repr::Num(v) => Ok(v),
            Repr::Str(s) => match s.as_str() {
                "NaN" => Ok(f64::NAN),
                "inf" => Ok(f64::INFINITY),
                "-inf" => Ok(f64::NEG_INFINITY),
                other => Err(serde::de::Error::custom(format!("not a number: {other:?}"))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_aggregate_reset() {
        let mut c = Cumulative::new();
        c.extend([4.0, 1.0, 3.0]);
        c.update(2.0);
        let s = c.aggregate();
        assert_eq!(s.n, 4);
        assert_eq!(s.mean, 2.5);
        assert_eq!(s.median, 2.5);
        assert_eq!((s.min, s.max), (1.0, 4.0));
        // sample sd of 1..4: sqrt(5/3)
        assert!((s.sd - (5.0f64 / 3.0).sqrt()).abs() < 1e-15);
        c.update(100.0);
        assert_eq!(c.aggregate().median, 3.0);
        c.reset();
        assert!(c.is_empty());
        let e = c.aggregate();
        assert_eq!(e.n, 0);
        assert!(e.mean.is_nan() && e.median.is_nan());
    }

    #[test]
    fn one_value_has_no_sd_and_json_keeps_non_finite() {
        let s = Summary::of(&[f64::INFINITY]);
        assert!(s.sd.is_nan());
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(
            j,
            r#"{"n":1,"mean":"inf","sd":"NaN","median":"inf","min":"inf","max":"inf"}"#
        );
        let back: Summary = serde_json::from_str(&j).unwrap();
        assert_eq!(back.mean, f64::INFINITY);
        assert!(back.sd.is_nan());
        let s = Summary::of(&[1.5, 2.5]);
        let back: Summary = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}
