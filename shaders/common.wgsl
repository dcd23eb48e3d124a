// Shared by every kernel file: the host prepends this file to each of them at compile time
// (`shader!` in src/kernels/mod.rs), since WGSL has no include.

struct Grid {
    // Workgroup offset of this dispatch, for grids split across several dispatches.
    offset: vec4<u32>,
}

@group(0) @binding(0) var<uniform> grid: Grid;

// Activation codes: 0 identity, 1 relu, 2 sigmoid, 3 tanh (Activation::code in src/model.rs).
fn activate(act: u32, z: f32) -> f32 {
    switch act {
        case 1u: { return max(z, 0.0); }
        case 2u: { return sigmoid(z); }
        case 3u: { return tanh(z); }
        default: { return z; }
    }
}

// f'(z), from the output a = f(z): sigmoid a(1-a), tanh 1-a^2, relu [a > 0] (the same as
// [z > 0] for a = max(z, 0), and 0 for a unit a TopK selection zeroed: docs/design.md section 12).
fn activation_derivative(act: u32, z: f32, a: f32) -> f32 {
    switch act {
        case 1u: { return select(0.0, 1.0, a > 0.0); }
        case 2u: { return a * (1.0 - a); }
        case 3u: { return 1.0 - a * a; }
        default: { return 1.0; }
    }
}

// The sum of `v` over a workgroup of TREE_WG invocations, `lid` this one's index: a fixed tree,
// so the result is the same bit for bit on every run. Every invocation must call it.
const TREE_WG: u32 = 256u;
var<workgroup> tree_partial: array<f32, 256>;

fn tree_sum(lid: u32, v: f32) -> f32 {
    workgroupBarrier();
    tree_partial[lid] = v;
    workgroupBarrier();
    for (var stride = TREE_WG / 2u; stride > 0u; stride /= 2u) {
        if (lid < stride) {
            tree_partial[lid] += tree_partial[lid + stride];
        }
        workgroupBarrier();
    }
    return tree_partial[0];
}

// activate and activation_derivative on four elements (the vec4 kernels' epilogues).
fn activate4(act: u32, z: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(activate(act, z.x), activate(act, z.y), activate(act, z.z), activate(act, z.w));
}

// f'(z) from a = f(z) (activation_derivative reads only a).
fn derivative4(act: u32, z: vec4<f32>, a: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(
        activation_derivative(act, z.x, a.x),
        activation_derivative(act, z.y, a.y),
        activation_derivative(act, z.z, a.z),
        activation_derivative(act, z.w, a.w),
    );
}

fn sigmoid(x: f32) -> f32 {
    return 1.0 / (1.0 + exp(-x));
}

// A term of a column reduction (ColumnTransform in src/reference.rs): 0 the value, 1 the hard
// firing indicator [v > 0], 2 the soft one sigmoid(v / T). column_sum and fire_count_rho share it.
fn column_term(transform: u32, v: f32, temperature: f32) -> f32 {
    switch transform {
        case 1u: { return select(0.0, 1.0, v > 0.0); }
        case 2u: { return sigmoid(v / temperature); }
        default: { return v; }
    }
}

// The step state (StepState in src/layout.rs; docs/design.md section 5): words of a small
// storage buffer that the kernels read and advance, so each of many steps recorded into one
// submit sees its own values. STATE_STEP is the count the kernels of a step read (t = step + 1);
// STATE_DONE the steps completed, which a layered step's update advances (it cannot write the
// word its own invocations read) and the next gather_rows copies into STATE_STEP.
const STATE_CURSOR: u32 = 0u;
const STATE_STEP: u32 = 1u;
const STATE_DONE: u32 = 2u;

// An entry of the layer table (FusedLayer in src/kernels/step.rs) that the fused kernels and
// panel_forward read: a layer's widths, activation, parameter offsets (flat parameters) and
// activation offsets (one buffer per kind).
struct Layer {
    n_out: u32,
    n_in: u32,
    act: u32,
    w_off: u32,
    b_off: u32,
    // where A_{l-1} starts in `a_all`, and where Z_l / A_l / delta_l start
    in_off: u32,
    out_off: u32,
    // index of this layer's first parameter in fused_update's enumeration
    param_start: u32,
}

// An entry of the step-values table (StepValues in src/layout.rs): what the update of step t
// applies, computed on the host in f64. Entry t - 1, the last one for every later step.
struct StepValues {
    lr: f32,
    // Adam: lr / (1 - beta1^t) and sqrt(1 - beta2^t)
    step_size: f32,
    bc2_sqrt: f32,
    // the share of the sparsity weight beta this step applies (a warm-up)
    beta_scale: f32,
}

// kl-freq's target at step t (1-based) of an anneal over `steps` steps (docs/design.md section
// 11): geometric from max(ANNEAL_START, rho) to rho as t/steps goes from 0 to 1, rho from then on
// and without an anneal (steps 0). Twin: model::annealed_rho with optim::beta_scale's share.
const ANNEAL_START: f32 = 0.5;

// Branch-free: lavapipe ran a kernel calling a version with an early return and exp/log 15
// times slower, even where the call never ran. pow(x, 0) is exactly 1, so past the anneal (and
// without one: steps 0 counts as 1) the target is rho itself.
fn annealed_rho(rho: f32, t: u32, steps: u32) -> f32 {
    let share = min(1.0, f32(t) / f32(max(steps, 1u)));
    return rho * pow(max(ANNEAL_START, rho) / rho, 1.0 - share);
}

// rho_hat clamped to [eps, 1 - eps] for KL and its derivative (docs/design.md section 3); 1 - q
// is clamped on its own, since 1 - (1 - eps) is not eps in f32. The clamp passes the gradient
// straight through, so a saturated unit is still pulled back.
fn clamped_q(rho_hat_j: f32, eps: f32) -> f32 {
    return clamp(rho_hat_j, eps, 1.0 - eps);
}

fn clamped_one_minus_q(rho_hat_j: f32, eps: f32) -> f32 {
    return clamp(1.0 - rho_hat_j, eps, 1.0 - eps);
}

// KL(rho || q) = rho log(rho/q) + (1-rho) log((1-rho)/(1-q))
fn kl_divergence(rho: f32, rho_hat_j: f32, eps: f32) -> f32 {
    let q = clamped_q(rho_hat_j, eps);
    let one_minus_q = clamped_one_minus_q(rho_hat_j, eps);
    return rho * log(rho / q) + (1.0 - rho) * log((1.0 - rho) / one_minus_q);
}

// KL'(q) = -rho/q + (1-rho)/(1-q)
fn kl_derivative(rho: f32, rho_hat_j: f32, eps: f32) -> f32 {
    let q = clamped_q(rho_hat_j, eps);
    let one_minus_q = clamped_one_minus_q(rho_hat_j, eps);
    return -rho / q + (1.0 - rho) / one_minus_q;
}
