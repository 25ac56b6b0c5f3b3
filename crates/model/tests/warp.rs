//! The spatial transformer: identity, integer shifts, border padding and gradients against
//! finite differences.

use model::warp::{sampling_grid, warp, warp_through_plane, warp_with, WarpMethod};
use tch::{Device, Kind, Tensor};

fn max_abs(t: &Tensor) -> f64 {
    t.abs().max().double_value(&[])
}

#[test]
fn zero_flow_is_the_identity() {
    tch::manual_seed(1);
    for (b, c, h, w) in [(1, 1, 8, 8), (2, 3, 17, 32), (1, 1, 2, 5)] {
        let image = Tensor::rand([b, c, h, w], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        let flow = Tensor::zeros([b, 2, h, w], (Kind::Float, Device::Cpu));
        let diff = max_abs(&(warp(&image, &flow) - &image));
        assert!(
            diff <= 1e-6,
            "{b}x{c}x{h}x{w}: identity differs by {diff:e}"
        );
    }
}

#[test]
fn zero_flow_grid_spans_minus_one_to_one_at_pixel_centres() {
    let grid = sampling_grid(&Tensor::zeros([1, 2, 3, 5], (Kind::Double, Device::Cpu)));
    assert_eq!(grid.size(), vec![1, 3, 5, 2]);
    // (x, y) of the first and last pixels, and x of the middle column
    let at = |y: i64, x: i64, k: i64| grid.double_value(&[0, y, x, k]);
    assert_eq!((at(0, 0, 0), at(0, 0, 1)), (-1.0, -1.0));
    assert_eq!((at(2, 4, 0), at(2, 4, 1)), (1.0, 1.0));
    assert_eq!(at(1, 2, 0), 0.0);
    assert_eq!(at(1, 2, 1), 0.0);
}

#[test]
fn integer_shift_reproduces_the_shifted_image_and_pads_with_the_border() {
    tch::manual_seed(2);
    let (h, w) = (9, 12);
    let image = Tensor::rand([2, 2, h, w], (Kind::Float, Device::Cpu));
    let (dx, dy) = (3i64, -2i64);
    let flow = Tensor::cat(
        &[
            Tensor::full([2, 1, h, w], dx as f64, (Kind::Float, Device::Cpu)),
            Tensor::full([2, 1, h, w], dy as f64, (Kind::Float, Device::Cpu)),
        ],
        1,
    );
    let out = warp(&image, &flow);
    // out[y, x] = image[y + dy, x + dx] wherever that is inside the image
    let valid_out = out.narrow(2, -dy, h + dy).narrow(3, 0, w - dx);
    let source = image.narrow(2, 0, h + dy).narrow(3, dx, w - dx);
    assert!(max_abs(&(valid_out - source)) <= 1e-6);
    // outside, border padding repeats the nearest edge: the last `dx` columns of each row
    // take the image's last column, the first `-dy` rows take its first row
    let right = out.narrow(2, -dy, h + dy).narrow(3, w - dx, dx);
    let last_col = image
        .narrow(2, 0, h + dy)
        .narrow(3, w - 1, 1)
        .expand_as(&right);
    assert!(max_abs(&(right - last_col)) <= 1e-6);
    let top = out.narrow(2, 0, -dy).narrow(3, 0, w - dx);
    let first_row = image.narrow(2, 0, 1).narrow(3, dx, w - dx).expand_as(&top);
    assert!(max_abs(&(top - first_row)) <= 1e-6);
}

#[test]
fn half_pixel_shift_averages_neighbours() {
    let image = Tensor::arange(6, (Kind::Double, Device::Cpu))
        .view([1, 1, 1, 6])
        .repeat([1, 1, 2, 1]);
    let flow = Tensor::cat(
        &[
            Tensor::full([1, 1, 2, 6], 0.5, (Kind::Double, Device::Cpu)),
            Tensor::zeros([1, 1, 2, 6], (Kind::Double, Device::Cpu)),
        ],
        1,
    );
    let out = warp(&image, &flow);
    let expected = Tensor::from_slice(&[0.5, 1.5, 2.5, 3.5, 4.5, 5.0]);
    assert!(max_abs(&(out.get(0).get(0).get(1) - expected)) <= 1e-12);
}

/// Central differences of `f` with respect to every element of `x` (f64).
fn numeric_grad(x: &Tensor, f: &dyn Fn(&Tensor) -> f64) -> Tensor {
    let eps = 1e-6;
    let flat = x.flatten(0, -1);
    let n = flat.size()[0];
    let mut grad = vec![0.0; n as usize];
    for (i, g) in grad.iter_mut().enumerate() {
        let i = i as i64;
        let shifted = |delta: f64| {
            let t = flat.copy();
            let _ = t.get(i).fill_(flat.double_value(&[i]) + delta);
            f(&t.view_as(x))
        };
        *g = (shifted(eps) - shifted(-eps)) / (2.0 * eps);
    }
    Tensor::from_slice(&grad).view_as(x)
}

#[test]
fn gradients_match_finite_differences() {
    tch::manual_seed(3);
    let opts = (Kind::Double, Device::Cpu);
    let (h, w) = (5, 6);
    let image = Tensor::rand([1, 2, h, w], opts).set_requires_grad(true);
    // non-integer displacements, some reaching past the border
    let flow = (Tensor::rand([1, 2, h, w], opts) * 3.0 - 1.5).set_requires_grad(true);
    let weights = Tensor::randn([1, 2, h, w], opts);
    let loss = |img: &Tensor, fl: &Tensor| (warp(img, fl) * &weights).sum(Kind::Double);

    loss(&image, &flow).backward();
    let (gi, gf) = (image.grad(), flow.grad());
    let (image0, flow0) = (image.detach(), flow.detach());
    let ni = numeric_grad(&image0, &|x| loss(x, &flow0).double_value(&[]));
    let nf = numeric_grad(&flow0, &|x| loss(&image0, x).double_value(&[]));
    let di = max_abs(&(&gi - &ni));
    let df = max_abs(&(&gf - &nf));
    assert!(
        di < 1e-6,
        "image gradient differs from finite differences by {di:e}"
    );
    assert!(
        df < 1e-6,
        "flow gradient differs from finite differences by {df:e}"
    );
    assert!(
        max_abs(&gf) > 1e-2,
        "the flow gradient is not trivially zero"
    );
}

#[test]
fn equals_libtorch_grid_sampler_on_the_normalized_grid() {
    tch::manual_seed(4);
    let opts = (Kind::Double, Device::Cpu);
    let image = Tensor::rand([2, 3, 7, 10], opts);
    // large enough to leave the image on every side
    let flow = Tensor::randn([2, 2, 7, 10], opts) * 4.0;
    // grid_sampler(bilinear = 0, border = 1, align_corners = true)
    let reference = image.grid_sampler(&sampling_grid(&flow), 0, 1, true);
    assert!(max_abs(&(warp(&image, &flow) - reference)) < 1e-12);
}

/// The training default (libtorch's fused sampler) computes what the exact warp computes, in
/// value and in both gradients, in float32 as training runs it; and a zero field is the
/// identity to a few ulps (not exactly: the coordinate round trip).
#[test]
fn grid_sample_method_agrees_with_the_exact_warp_in_values_and_gradients() {
    tch::manual_seed(5);
    let opts = (Kind::Float, Device::Cpu);
    let image = Tensor::rand([2, 1, 24, 32], opts).set_requires_grad(true);
    let flow = (Tensor::randn([2, 2, 24, 32], opts) * 3.0).set_requires_grad(true);
    let weights = Tensor::randn([2, 1, 24, 32], opts);
    let mut results = Vec::new();
    for method in [WarpMethod::Exact, WarpMethod::GridSample] {
        let out = warp_with(method, &image, &flow);
        (&out * &weights).sum(Kind::Float).backward();
        results.push((out.detach(), image.grad().copy(), flow.grad().copy()));
        let _ = image.grad().zero_();
        let _ = flow.grad().zero_();
    }
    let ((o1, gi1, gf1), (o2, gi2, gf2)) = (&results[0], &results[1]);
    assert!(max_abs(&(o1 - o2)) < 1e-5, "values differ");
    assert!(max_abs(&(gi1 - gi2)) < 1e-4, "image gradients differ");
    assert!(
        max_abs(&(gf1 - gf2)) < 1e-3 * max_abs(gf1),
        "flow gradients differ"
    );
    assert!(max_abs(gf1) > 1e-2 && max_abs(&(o1 - image.detach())) > 0.05);
    let zero = Tensor::zeros([2, 2, 24, 32], opts);
    let same = warp_with(WarpMethod::GridSample, &image.detach(), &zero);
    assert!(max_abs(&(same - image.detach())) < 1e-5);
    assert_eq!(WarpMethod::default(), WarpMethod::GridSample);
}

/// #13 item 1: a diverging R's flow (NaN, +-inf) must not crash the sampler's backward pass
/// (libtorch's grid sampler segfaulted on it) nor index out of bounds (the exact warp
/// panicked): both warps stay finite forward and backward, and a finite flow far outside the
/// image is sampled and differentiated as before (the border).
#[test]
fn non_finite_flows_neither_crash_nor_leak_into_the_image() {
    let image = Tensor::randn([1, 1, 6, 7], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    for method in [WarpMethod::GridSample, WarpMethod::Exact] {
        let flow = Tensor::zeros([1, 2, 6, 7], (Kind::Float, Device::Cpu));
        let _ = flow.narrow(3, 0, 1).fill_(f64::NAN);
        let _ = flow.narrow(3, 1, 1).fill_(f64::INFINITY);
        let _ = flow.narrow(3, 2, 1).fill_(f64::NEG_INFINITY);
        let flow = flow.set_requires_grad(true);
        let out = warp_with(method, &image, &flow);
        assert_eq!(
            out.isfinite().all().int64_value(&[]),
            1,
            "{method:?}: the warped image is not finite"
        );
        out.sum(Kind::Float).backward();
        let g = image.grad();
        assert_eq!(g.isfinite().all().int64_value(&[]), 1, "{method:?}");
        let _ = image.grad().zero_();
        // a finite flow far beyond the border samples the border pixel, as before
        let far = Tensor::full([1, 2, 6, 7], 1e6, (Kind::Float, Device::Cpu));
        let out = warp_with(method, &image.detach(), &far);
        let corner = image.double_value(&[0, 0, 5, 6]);
        assert!(max_abs(&(out - corner)) < 1e-5, "{method:?}");
    }
}

/// `warp_through_plane` (#16): the same as libtorch's trilinear `grid_sampler_3d`
/// (align_corners, border padding) on the three-slice volume at (x + dx, y + dy, 1 + dz), in
/// values and in the gradients of the image and of all three field components; dz = 0 is the
/// in-plane warp of the centre slice, dz = +-1 the slice above or below.
#[test]
fn through_plane_warp_is_trilinear_sampling_of_the_stack() {
    tch::manual_seed(7);
    let (b, h, w) = (2i64, 9i64, 11i64);
    let opts = (Kind::Double, Device::Cpu);
    let stack = (Tensor::rand([b, 3, h, w], opts) * 2.0 - 1.0).set_requires_grad(true);
    // in-plane up to +-2 px, dz in (-1, 1)
    let inplane = Tensor::rand([b, 2, h, w], opts) * 4.0 - 2.0;
    let dz = Tensor::rand([b, 1, h, w], opts) * 1.98 - 0.99;
    let flow = Tensor::cat(&[inplane, dz], 1).set_requires_grad(true);
    for method in [WarpMethod::GridSample, WarpMethod::Exact] {
        let ours = warp_through_plane(method, &stack, &flow);
        assert_eq!(ours.size(), vec![b, 1, h, w]);
        // the reference: [b, 1, 3, h, w] sampled at a [b, 1, h, w, 3] grid of (x, y, z)
        let g2 = sampling_grid(&flow.narrow(1, 0, 2)); // [b, h, w, 2]
        let gz = flow.narrow(1, 2, 1).permute([0, 2, 3, 1]); // [b, h, w, 1], z = 0 + dz
        let grid = Tensor::cat(&[g2, gz], 3).unsqueeze(1);
        let reference = stack
            .unsqueeze(1)
            .grid_sampler_3d(&grid, 0, 1, true)
            .squeeze_dim(2);
        let diff = max_abs(&(&ours - &reference));
        assert!(diff < 1e-9, "{method:?}: values differ by {diff:e}");
        let probe = Tensor::rand([b, 1, h, w], opts);
        let grads = |out: &Tensor| {
            Tensor::run_backward(
                &[(out * &probe).sum(Kind::Double)],
                &[&stack, &flow],
                false,
                false,
            )
        };
        let (go, gr) = (grads(&ours), grads(&reference));
        for (what, a, r) in [("image", &go[0], &gr[0]), ("field", &go[1], &gr[1])] {
            let d = max_abs(&(a - r));
            assert!(d < 1e-8, "{method:?}: {what} gradients differ by {d:e}");
        }
    }
    // the special cases, with a zero in-plane field
    let zeros = Tensor::zeros([b, 2, h, w], opts);
    let with_dz = |v: f64| {
        Tensor::cat(
            &[zeros.shallow_clone(), Tensor::full([b, 1, h, w], v, opts)],
            1,
        )
    };
    let s = stack.detach();
    let at = |v: f64| warp_through_plane(WarpMethod::Exact, &s, &with_dz(v));
    assert!(max_abs(&(at(0.0) - s.narrow(1, 1, 1))) == 0.0);
    assert!(max_abs(&(at(1.0) - s.narrow(1, 2, 1))) == 0.0);
    assert!(max_abs(&(at(-1.0) - s.narrow(1, 0, 1))) == 0.0);
    let half = (s.narrow(1, 0, 1) + s.narrow(1, 1, 1)) * 0.5;
    assert!(max_abs(&(at(-0.5) - half)) < 1e-12);
}
