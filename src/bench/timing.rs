//! How the benchmark times things: repetitions chosen from a warm-up, GPU timestamp queries
//! around a pass where the adapter has them (the wall clock otherwise), medians with min and max.

use crate::device::Gpu;
use crate::kernels::Launch;
use std::time::Instant;

/// How much to repeat: `--quick` or the full run.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) quick: bool,
    pub(crate) warmups: usize,
    pub(crate) runs: usize,
    /// Seconds one timed pass should last at least.
    pub(crate) pass_target: f64,
    pub(crate) max_reps: usize,
    /// Seconds one run of N steps should last at least.
    pub(crate) step_target: f64,
    pub(crate) max_steps: usize,
    /// Skip the f64 reference when one step is estimated to take longer (seconds).
    pub(crate) reference_limit: f64,
    /// Stop repeating the f64 reference step after this long (seconds).
    pub(crate) reference_budget: f64,
}

impl Settings {
    pub(crate) fn new(quick: bool, timestamps: bool) -> Settings {
        // The wall clock includes a submit and a wake-up per pass: make passes longer.
        let pass_target = if timestamps {
            2e-3
        } else if quick {
            10e-3
        } else {
            20e-3
        };
        if quick {
            Settings {
                quick,
                warmups: 1,
                runs: 3,
                pass_target,
                max_reps: 500,
                step_target: 0.05,
                max_steps: 20,
                reference_limit: 1.5,
                reference_budget: 2.0,
            }
        } else {
            Settings {
                quick,
                warmups: 2,
                runs: 7,
                pass_target,
                max_reps: 2000,
                step_target: 0.5,
                max_steps: 500,
                reference_limit: 5.0,
                reference_budget: 20.0,
            }
        }
    }
}

/// Median, min and max of several runs (seconds per unit), with the repetitions behind them.
#[derive(Clone, Debug)]
pub struct Measured {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// Repetitions per run (launches per pass, or steps per run).
    pub reps: usize,
    pub runs: usize,
}

impl Measured {
    pub(crate) fn from_runs(mut per_unit: Vec<f64>, reps: usize) -> Measured {
        per_unit.sort_by(|a, b| a.total_cmp(b));
        let n = per_unit.len();
        let median = if n % 2 == 1 { per_unit[n / 2] } else { 0.5 * (per_unit[n / 2 - 1] + per_unit[n / 2]) };
        Measured { median, min: per_unit[0], max: per_unit[n - 1], reps, runs: n }
    }
}

/// Times `pass(reps)` (which returns the seconds `reps` repetitions took): a first pass of one
/// repetition warms up and picks `reps` so a pass lasts `target`; then warm-ups, then runs.
pub(crate) fn measure(mut pass: impl FnMut(usize) -> f64, s: &Settings, target: f64, max_reps: usize) -> Measured {
    let first = pass(1).max(1e-9);
    let reps = ((target / first).ceil() as usize).clamp(1, max_reps);
    for _ in 1..s.warmups {
        pass(reps);
    }
    let runs = (0..s.runs).map(|_| pass(reps) / reps as f64).collect();
    Measured::from_runs(runs, reps)
}

// ---------------------------------------------------------------------------------------------
// Timing passes on the device
// ---------------------------------------------------------------------------------------------

pub(crate) struct Timestamps {
    pub(crate) set: wgpu::QuerySet,
    pub(crate) resolve: wgpu::Buffer,
    pub(crate) readback: wgpu::Buffer,
    pub(crate) period_ns: f64,
}

/// Runs compute passes and says how long they took: GPU timestamps or the wall clock.
pub(crate) struct Timer {
    pub(crate) gpu: Gpu,
    pub(crate) timestamps: Option<Timestamps>,
}

impl Timer {
    pub(crate) fn new(gpu: &Gpu) -> Timer {
        let timestamps = gpu.features.contains(wgpu::Features::TIMESTAMP_QUERY).then(|| {
            let device = &gpu.device;
            let buffer = |label, usage| {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size: 16,
                    usage,
                    mapped_at_creation: false,
                })
            };
            Timestamps {
                set: device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("bench timestamps"),
                    ty: wgpu::QueryType::Timestamp,
                    count: 2,
                }),
                resolve: buffer("timestamp resolve", wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC),
                readback: buffer("timestamp readback", wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST),
                period_ns: gpu.queue.get_timestamp_period() as f64,
            }
        });
        Timer { gpu: gpu.clone(), timestamps }
    }

    pub(crate) fn method(&self) -> String {
        match &self.timestamps {
            Some(t) => format!("GPU timestamp queries around each pass ({} ns per tick)", t.period_ns),
            None => "wall clock around submit + wait (this adapter has no timestamp queries)".into(),
        }
    }

    /// Records `reps` repetitions of `launches` into one compute pass, submits it, waits, and
    /// returns the seconds the pass took.
    pub(crate) fn pass(&self, launches: &[Launch], reps: usize) -> f64 {
        let gpu = &self.gpu;
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        {
            let timestamp_writes = self.timestamps.as_ref().map(|t| wgpu::ComputePassTimestampWrites {
                query_set: &t.set,
                beginning_of_pass_write_index: Some(0),
                end_of_pass_write_index: Some(1),
            });
            let mut pass =
                encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("bench"), timestamp_writes });
            for _ in 0..reps {
                for launch in launches {
                    launch.record(&mut pass);
                }
            }
        }
        if let Some(t) = &self.timestamps {
            encoder.resolve_query_set(&t.set, 0..2, &t.resolve, 0);
            encoder.copy_buffer_to_buffer(&t.resolve, 0, &t.readback, 0, 16);
        }
        let start = Instant::now();
        gpu.queue.submit([encoder.finish()]);
        let ticks = match &self.timestamps {
            // A lost device shows up at the trainer's next read-back; here it only costs the
            // timestamps (the wall clock is used instead).
            Some(t) => gpu.map_read(&t.readback).ok().map(|bytes| {
                let at = |i: usize| u64::from_le_bytes(bytes[8 * i..8 * i + 8].try_into().unwrap_or_default());
                (at(0), at(1), t.period_ns)
            }),
            None => {
                let _ = gpu.wait();
                None
            }
        };
        let wall = start.elapsed().as_secs_f64();
        match ticks {
            // A timestamp pair that goes backwards or reads zero is not trusted.
            Some((begin, end, period)) if end > begin && period > 0.0 => (end - begin) as f64 * period * 1e-9,
            _ => wall,
        }
    }
}
