//! Line charts on a [`Canvas`], and `curves.png`: the run's loss and validation curves drawn
//! from `metrics.jsonl` (so a resumed run's figure shows its whole history).

use serde_json::Value;
use std::path::Path;
use util::canvas::{Canvas, Rgb, BLACK, GREY, LIGHT_GREY, PALETTE, WHITE};

/// One curve.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub label: String,
    pub color: Rgb,
    /// Dashed (used for the NCCT baselines).
    pub dashed: bool,
    /// `(x, y)`; non-finite points are skipped.
    pub points: Vec<(f64, f64)>,
}

/// A chart: title, series, optional log scale on y.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    pub title: String,
    pub series: Vec<Series>,
    pub log_y: bool,
}

const MARGIN_L: usize = 58;
const MARGIN_R: usize = 10;
const MARGIN_T: usize = 22;
const MARGIN_B: usize = 20;

impl Chart {
    /// Draws the chart into the `w` x `h` box at `(x, y)` of `canvas`.
    pub fn draw(&self, canvas: &mut Canvas, x: i64, y: i64, w: usize, h: usize) {
        canvas.fill_rect(x, y, w, h, WHITE);
        canvas.text(x + MARGIN_L as i64, y + 6, &self.title, BLACK, 1);
        let (px, py) = (x + MARGIN_L as i64, y + MARGIN_T as i64);
        let pw = w.saturating_sub(MARGIN_L + MARGIN_R).max(10);
        let ph = h.saturating_sub(MARGIN_T + MARGIN_B).max(10);
        canvas.rect(px, py, pw, ph, GREY);
        let ty = |v: f64| if self.log_y { v.log10() } else { v };
        let pts = self
            .series
            .iter()
            .flat_map(|s| s.points.iter())
            .filter(|(a, b)| a.is_finite() && b.is_finite() && (!self.log_y || *b > 0.0));
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(a, b) in pts {
            x0 = x0.min(a);
            x1 = x1.max(a);
            y0 = y0.min(ty(b));
            y1 = y1.max(ty(b));
        }
        if x0 > x1 {
            canvas.text(px + 6, py + 6, "no data yet", GREY, 1);
            return;
        }
        if x1 - x0 < 1e-12 {
            x1 = x0 + 1.0;
        }
        if y1 - y0 < 1e-12 {
            let pad = y0.abs().max(1.0) * 0.05;
            y0 -= pad;
            y1 += pad;
        } else {
            let pad = (y1 - y0) * 0.05;
            y0 -= pad;
            y1 += pad;
        }
        let map = |a: f64, b: f64| -> (i64, i64) {
            let u = (a - x0) / (x1 - x0);
            let v = (ty(b) - y0) / (y1 - y0);
            (
                px + (u * (pw - 1) as f64).round() as i64,
                py + ((1.0 - v) * (ph - 1) as f64).round() as i64,
            )
        };
        // Grid lines and y labels at 5 levels.
        for i in 0..5 {
            let v = y0 + (y1 - y0) * i as f64 / 4.0;
            let yy = py + ((1.0 - i as f64 / 4.0) * (ph - 1) as f64).round() as i64;
            canvas.line(px + 1, yy, px + pw as i64 - 2, yy, LIGHT_GREY);
            let label = fmt_num(if self.log_y { 10f64.powf(v) } else { v });
            let lw = Canvas::text_width(&label, 1) as i64;
            canvas.text(px - lw - 4, yy - 3, &label, BLACK, 1);
        }
        // x labels: first and last step.
        let (l0, l1) = (fmt_num(x0), fmt_num(x1));
        canvas.text(px, py + ph as i64 + 5, &l0, BLACK, 1);
        canvas.text(
            px + pw as i64 - Canvas::text_width(&l1, 1) as i64,
            py + ph as i64 + 5,
            &l1,
            BLACK,
            1,
        );
        for s in &self.series {
            let mut prev: Option<(i64, i64)> = None;
            for &(a, b) in &s.points {
                if !(a.is_finite() && b.is_finite()) || (self.log_y && b <= 0.0) {
                    prev = None;
                    continue;
                }
                let p = map(a, b);
                match prev {
                    Some(q) if s.dashed => {
                        canvas.line_pattern(q.0, q.1, p.0, p.1, s.color, 0x0F0F_0F0F)
                    }
                    Some(q) => canvas.line(q.0, q.1, p.0, p.1, s.color),
                    None => canvas.set(p.0, p.1, s.color),
                }
                prev = Some(p);
            }
        }
        // Legend, top right inside the plot.
        let mut ly = py + 4;
        for s in &self.series {
            let lw = Canvas::text_width(&s.label, 1) as i64;
            let lx = px + pw as i64 - lw - 22;
            if s.dashed {
                canvas.line_pattern(lx, ly + 3, lx + 12, ly + 3, s.color, 0x3333_3333);
            } else {
                canvas.fill_rect(lx, ly + 2, 12, 3, s.color);
            }
            canvas.text(lx + 16, ly, &s.label, s.color, 1);
            ly += 10;
        }
    }
}

/// Compact axis numbers: `1.23e-4`, `0.052`, `12.5`, `1500`.
pub fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.1e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// `(step, value)` of field `key` over the events of kind `event`.
pub fn field_series(events: &[Value], event: &str, key: &str) -> Vec<(f64, f64)> {
    events
        .iter()
        .filter(|e| e["event"] == event)
        .filter_map(|e| Some((e["step"].as_f64()?, e.get(key)?.as_f64()?)))
        .collect()
}

/// Draws `curves.png` from the events: generator loss terms, discriminator, validation MAE and
/// SSIM (model solid, NCCT baseline dashed).
pub fn draw_curves(events: &[Value], path: &Path) -> anyhow::Result<()> {
    let s = |label: &str, i: usize, event: &str, key: &str, dashed: bool| Series {
        label: label.into(),
        color: PALETTE[i % PALETTE.len()],
        dashed,
        points: field_series(events, event, key),
    };
    let charts = [
        Chart {
            title: "generator losses (log)".into(),
            log_y: true,
            series: vec![
                s("total", 0, "train", "loss_g", false),
                s("l1", 1, "train", "l1", false),
                s("1-ssim", 2, "train", "ssim", false),
                s("adv", 3, "train", "adv_g", false),
                s("smooth", 4, "train", "smooth", false),
            ],
        },
        Chart {
            title: "discriminator".into(),
            log_y: false,
            series: vec![
                s("loss d", 0, "train", "loss_d", false),
                s("d(real)", 2, "train", "d_real", false),
                s("d(fake)", 1, "train", "d_fake", false),
            ],
        },
        Chart {
            title: "validation mae (hu)".into(),
            log_y: false,
            series: vec![
                s("body", 0, "val", "mae_body", false),
                s("lung", 1, "val", "mae_lung", false),
                s("ncct body", 0, "val", "baseline_mae_body", true),
                s("ncct lung", 1, "val", "baseline_mae_lung", true),
                s("body reg", 2, "val", "mae_body_reg", false),
                s("ncct body reg", 2, "val", "baseline_mae_body_reg", true),
            ],
        },
        Chart {
            title: "validation ssim".into(),
            log_y: false,
            series: vec![
                s("body", 0, "val", "ssim_body", false),
                s("lung", 1, "val", "ssim_lung", false),
                s("ncct body", 0, "val", "baseline_ssim_body", true),
                s("ncct lung", 1, "val", "baseline_ssim_lung", true),
            ],
        },
    ];
    let (cw, ch) = (420usize, 260usize);
    let mut canvas = Canvas::new(2 * cw, 2 * ch, WHITE);
    for (i, chart) in charts.iter().enumerate() {
        let (cx, cy) = ((i % 2 * cw) as i64, (i / 2 * ch) as i64);
        chart.draw(&mut canvas, cx, cy, cw, ch);
    }
    Ok(canvas.save_png(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_are_compact() {
        assert_eq!(fmt_num(0.0), "0");
        assert_eq!(fmt_num(1500.0), "1500");
        assert_eq!(fmt_num(12.345), "12.35");
        assert_eq!(fmt_num(0.0523), "0.052");
        assert_eq!(fmt_num(1.5e-4), "1.5e-4");
    }

    #[test]
    fn series_come_from_matching_events() {
        let ev = vec![
            json!({"step": 1, "event": "train", "l1": 0.5}),
            json!({"step": 2, "event": "val", "l1": 9.0}),
            json!({"step": 3, "event": "train", "l1": null}),
            json!({"step": 4, "event": "train", "l1": 0.25}),
        ];
        assert_eq!(
            field_series(&ev, "train", "l1"),
            vec![(1.0, 0.5), (4.0, 0.25)]
        );
    }

    #[test]
    fn a_rising_series_is_drawn_rising() {
        let chart = Chart {
            title: "t".into(),
            log_y: false,
            series: vec![Series {
                label: "x".into(),
                color: PALETTE[0],
                dashed: false,
                points: (0..10).map(|i| (i as f64, i as f64)).collect(),
            }],
        };
        let mut c = Canvas::new(300, 200, WHITE);
        chart.draw(&mut c, 0, 0, 300, 200);
        // Leftmost and rightmost coloured pixel inside the plot area (skip the legend rows).
        let mut first = None;
        let mut last = None;
        for x in MARGIN_L..300 - MARGIN_R {
            for y in 60..200 - MARGIN_B {
                if c.get(x, y) == Some(PALETTE[0]) {
                    first.get_or_insert((x, y));
                    last = Some((x, y));
                }
            }
        }
        let (f, l) = (first.unwrap(), last.unwrap());
        assert!(l.0 > f.0 && l.1 < f.1, "first {f:?}, last {l:?}");
    }

    #[test]
    fn curves_png_is_written_even_without_validation() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("curves.png");
        let ev = vec![json!({"step": 1, "event": "train", "loss_g": 1.0})];
        draw_curves(&ev, &p).unwrap();
        assert!(std::fs::metadata(&p).unwrap().len() > 100);
    }
}
