// Shared by every kernel file: the host prepends this file to each of them at compile time
// (`concat!` in src/kernels.rs), since WGSL has no include.

struct Grid {
    // Workgroup offset of this dispatch, for grids split across several dispatches.
    offset: vec4<u32>,
}

@group(0) @binding(0) var<uniform> grid: Grid;

// Activation codes: 0 identity, 1 relu, 2 sigmoid, 3 tanh (Activation::code in src/model.rs).
fn activate(act: u32, z: f32) -> f32 {
    switch act {
        case 1u: { return max(z, 0.0); }
        case 2u: { return 1.0 / (1.0 + exp(-z)); }
        case 3u: { return tanh(z); }
        default: { return z; }
    }
}

// f'(z), from the output a = f(z) where cheaper: sigmoid a(1-a), tanh 1-a^2, relu [z > 0].
fn activation_derivative(act: u32, z: f32, a: f32) -> f32 {
    switch act {
        case 1u: { return select(0.0, 1.0, z > 0.0); }
        case 2u: { return a * (1.0 - a); }
        case 3u: { return 1.0 - a * a; }
        default: { return 1.0; }
    }
}
