//! Every shader through every translator: each WGSL module the engine compiles is parsed and
//! validated by naga (the compiler wgpu uses), then each entry point, with every value of the
//! override constants the engine sets, is translated to SPIR-V (Vulkan), MSL (Metal), HLSL
//! (DX12) and GLSL (GL). A kernel that would not compile on a back end this machine has no GPU
//! for fails here, not on a user's machine. No adapter is needed.
//!
//! Back-end settings are those wgpu needs for these kernels: MSL 2.4 and HLSL shader model 6.0
//! (subgroup operations), GLSL ES 3.10 (compute shaders). The subgroup matmul is not translated to
//! GLSL: wgpu's GL back end has no subgroups, and the engine never builds that variant there
//! (`MatmulVariant::available`).

use naga::back::{glsl, hlsl, msl, spv};
use naga::valid::{Capabilities, ValidationFlags, Validator};
use sae_wgpu::kernels::{matmul, source, MatmulOp, MatmulVariant};

/// The override-constant values of each pipeline built from a module.
type ConstantSets = Vec<Vec<(String, f64)>>;

/// (name, source, override-constant sets, whether it needs subgroups).
fn modules() -> Vec<(&'static str, &'static str, ConstantSets, bool)> {
    // Each epilogue code, with PAIR off (every matmul pipeline but the pair's) and on.
    let epilogues = |op: MatmulOp| -> ConstantSets {
        op.epilogues()
            .iter()
            .flat_map(|e| {
                [0.0, 1.0].map(|pair| vec![("EPILOGUE".to_string(), e.code() as f64), ("PAIR".to_string(), pair)])
            })
            .collect()
    };
    // Every epilogue any matmul entry point is built with (each pipeline takes one).
    let mut all_epilogues: ConstantSets = MatmulOp::ALL.iter().flat_map(|&op| epilogues(op)).collect();
    all_epilogues.sort_by(|a, b| a[0].1.total_cmp(&b[0].1).then(a[1].1.total_cmp(&b[1].1)));
    all_epilogues.dedup();
    let none = || vec![Vec::new()];
    vec![
        ("matmul (tiled16)", matmul::source::TILED, all_epilogues.clone(), false),
        ("matmul (blocked4x4)", matmul::source::BLOCKED, all_epilogues.clone(), false),
        ("matmul (tiled64)", matmul::source::TILED64, all_epilogues.clone(), false),
        ("matmul (subgroup)", matmul::source::SUBGROUP, all_epilogues.clone(), true),
        ("matmul (subgroup vec4)", matmul::source::SUBGROUP_VEC4, all_epilogues, true),
        ("sparsity", source::SPARSITY, none(), false),
        ("reduce", source::REDUCE, none(), false),
        ("fires", source::FIRES, none(), false),
        ("loss", source::LOSS, none(), false),
        ("update", source::UPDATE, none(), false),
        ("data", source::DATA, none(), false),
        ("fused", source::FUSED, none(), false),
        ("topk", source::TOPK, none(), false),
        ("prebias", source::PREBIAS, none(), false),
        ("decoder", source::DECODER, none(), false),
        ("auxk", source::AUXK, none(), false),
        ("l1", source::L1, none(), false),
        ("threshold", source::THRESHOLD, none(), false),
        ("jumprelu", source::JUMPRELU, none(), false),
        ("panel", source::PANEL, none(), true),
    ]
}

#[test]
fn every_entry_point_translates_to_every_back_end() {
    let mut translated = 0;
    for (name, src, constant_sets, subgroups) in modules() {
        let module = naga::front::wgsl::parse_str(src).unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(src)));
        let info = Validator::new(ValidationFlags::all(), Capabilities::all())
            .validate(&module)
            .unwrap_or_else(|e| panic!("{name}: validation: {}", e.emit_to_string(src)));
        for ep in &module.entry_points {
            for constants in &constant_sets {
                let constants: naga::back::PipelineConstants = constants.iter().cloned().collect();
                let label = format!("{name}::{} {constants:?}", ep.name);
                let (module, info) = naga::back::pipeline_constants::process_overrides(
                    &module,
                    &info,
                    Some((ep.stage, &ep.name)),
                    &constants,
                )
                .unwrap_or_else(|e| panic!("{label}: overrides: {e}"));

                let spv_pipeline = spv::PipelineOptions { shader_stage: ep.stage, entry_point: ep.name.clone() };
                spv::write_vec(&module, &info, &spv::Options::default(), Some(&spv_pipeline))
                    .unwrap_or_else(|e| panic!("{label}: SPIR-V: {e}"));

                let msl_options = msl::Options { lang_version: (2, 4), ..Default::default() };
                let msl_pipeline =
                    msl::PipelineOptions { entry_point: Some((ep.stage, ep.name.clone())), ..Default::default() };
                msl::write_string(&module, &info, &msl_options, &msl_pipeline)
                    .unwrap_or_else(|e| panic!("{label}: MSL: {e}"));

                let hlsl_options = hlsl::Options { shader_model: hlsl::ShaderModel::V6_0, ..Default::default() };
                let hlsl_pipeline = hlsl::PipelineOptions { entry_point: Some((ep.stage, ep.name.clone())) };
                let mut out = String::new();
                hlsl::Writer::new(&mut out, &hlsl_options, &hlsl_pipeline)
                    .write(&module, &info, None)
                    .unwrap_or_else(|e| panic!("{label}: HLSL: {e}"));

                if !subgroups {
                    let glsl_options = glsl::Options {
                        version: glsl::Version::Embedded { version: 310, is_webgl: false },
                        ..Default::default()
                    };
                    let glsl_pipeline =
                        glsl::PipelineOptions { shader_stage: ep.stage, entry_point: ep.name.clone(), multiview: None };
                    let mut out = String::new();
                    glsl::Writer::new(&mut out, &module, &info, &glsl_options, &glsl_pipeline, Default::default())
                        .and_then(|mut w| w.write())
                        .unwrap_or_else(|e| panic!("{label}: GLSL: {e}"));
                }
                translated += 1;
            }
        }
    }
    println!("{translated} entry point / constant combinations translated");
    // Every matmul variant x its entry points x every epilogue code x PAIR off and on, the vec4
    // kernel likewise (its own four and the wide forward), and every other kernel once.
    let mut codes: Vec<u32> = MatmulOp::ALL.iter().flat_map(|op| op.epilogues().iter().map(|e| e.code())).collect();
    codes.sort();
    codes.dedup();
    let expected = (MatmulVariant::ALL.len() * MatmulOp::ALL.len()
        + MatmulVariant::SubgroupVec4.ops().len()
        + MatmulVariant::SubgroupWide.ops().len())
        * codes.len()
        * 2
        + sae_wgpu::kernels::Kernel::ALL.len();
    assert_eq!(translated, expected, "a module lost (or gained) entry points: keep this list in step with `Kernel`");
}
