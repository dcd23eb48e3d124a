//! Full-batch L-BFGS (docs/design.md section 9): the two-loop recursion and a line search
//! satisfying the strong Wolfe conditions, on the host in f64, ported from PyTorch's
//! `torch.optim.LBFGS(line_search_fn="strong_wolfe")` step for step, so a run can be compared
//! with PyTorch's from the same weights.
//!
//! Only the objective runs on the device: J and its gradient over the whole training set
//! ([`crate::trainer::Trainer::loss_and_gradient`]). The vector operations here are dot products
//! and axpys over the parameters, `O(M P)` per iteration for M stored pairs: 0.3 M flops at the
//! UFLDL size (P = 3,289, M = 100), microseconds on the host, against a device evaluation that
//! costs a full forward and backward pass over the data. Doing them in f64 on the host also keeps
//! the curvature pairs `s`, `y` exact enough that `y^T s > 0` tests mean something once the
//! steps are small; on the device they would cost a dispatch each and read back every dot.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// The settings of `--optimizer lbfgs`. The tolerances and the line search's constants are
/// PyTorch's defaults.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename = "lbfgs")]
pub struct LbfgsSettings {
    /// Curvature pairs kept (`--lbfgs-history`).
    pub history: usize,
    /// Scales every step (PyTorch's `lr`); 1 is the natural step of a quasi-Newton method.
    pub lr: f64,
    /// Stop once `max |g| <= tolerance_grad`.
    pub tolerance_grad: f64,
    /// Stop once a step or the change in J falls below this.
    pub tolerance_change: f64,
    /// Evaluations a line search may spend.
    pub max_line_search: usize,
}

pub mod defaults {
    pub const HISTORY: usize = 100;
    pub const TOLERANCE_GRAD: f64 = 1e-7;
    pub const TOLERANCE_CHANGE: f64 = 1e-9;
    pub const MAX_LINE_SEARCH: usize = 25;
    /// Sufficient decrease (Armijo) and curvature constants of the strong Wolfe conditions.
    pub const C1: f64 = 1e-4;
    pub const C2: f64 = 0.9;
}

impl LbfgsSettings {
    pub fn new(history: usize, lr: f64) -> Result<LbfgsSettings> {
        if history == 0 {
            return Err(Error::input("--lbfgs-history 0: keep at least one curvature pair (default 100)"));
        }
        if !(lr.is_finite() && lr > 0.0) {
            return Err(Error::input(format!(
                "--lr {lr}: L-BFGS scales its steps by lr; give a number > 0 (default 1)"
            )));
        }
        Ok(LbfgsSettings {
            history,
            lr,
            tolerance_grad: defaults::TOLERANCE_GRAD,
            tolerance_change: defaults::TOLERANCE_CHANGE,
            max_line_search: defaults::MAX_LINE_SEARCH,
        })
    }
}

/// What carries from one iteration to the next: with the parameters, all a resumed run needs
/// to continue bit for bit (J and its gradient at the parameters are recomputed, and the
/// device's evaluation is deterministic).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LbfgsState {
    /// Iterations done (PyTorch's `n_iter`).
    pub iterations: u64,
    /// Objective evaluations done (PyTorch's `func_evals`).
    pub evaluations: u64,
    /// The last search direction and step length.
    pub d: Vec<f64>,
    pub t: f64,
    /// Curvature pairs, oldest first: `y = g_{k+1} - g_k`, `s = x_{k+1} - x_k`, `ro = 1/(y^T s)`.
    pub y: VecDeque<Vec<f64>>,
    pub s: VecDeque<Vec<f64>>,
    pub ro: VecDeque<f64>,
    /// The initial inverse-Hessian scale `y^T s / y^T y` of the newest pair.
    pub h_diag: f64,
    /// The gradient at the start of the last iteration, and J there.
    pub prev_grad: Vec<f64>,
    pub prev_loss: f64,
}

/// Why the iterations stopped before the run's end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// `max |g| <= tolerance_grad`.
    Gradient,
    /// The direction is not a descent direction (`g^T d > -tolerance_change`).
    NoDescent,
    /// The step moved no parameter by more than `tolerance_change`.
    Step,
    /// J changed by less than `tolerance_change`.
    Loss,
}

impl Stop {
    pub fn describe(self) -> &'static str {
        match self {
            Stop::Gradient => "the gradient is below its tolerance (max |g| <= 1e-7)",
            Stop::NoDescent => "the direction no longer descends (g.d > -1e-9)",
            Stop::Step => "the step moved no parameter by more than 1e-9",
            Stop::Loss => "J changed by less than 1e-9",
        }
    }
}

/// What one iteration did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Iteration {
    /// The accepted step length along the direction.
    pub t: f64,
    /// Evaluations its line search spent.
    pub evaluations: usize,
    /// Set when the run should stop after this iteration (or, with `evaluations == 0`, before it).
    pub stop: Option<Stop>,
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn max_abs(a: &[f64]) -> f64 {
    a.iter().fold(0.0, |m, v| m.max(v.abs()))
}

/// `x + t d`, rounded to the parameters' f32: the point the device evaluates.
pub fn point(x: &[f32], t: f64, d: &[f64]) -> Vec<f32> {
    x.iter().zip(d).map(|(&xi, &di)| (xi as f64 + t * di) as f32).collect()
}

/// The objective: J and its gradient (f64, in the parameters' layout) at a point.
pub trait Objective {
    fn evaluate(&mut self, x: &[f32]) -> Result<(f64, Vec<f64>)>;
}

impl<F: FnMut(&[f32]) -> Result<(f64, Vec<f64>)>> Objective for F {
    fn evaluate(&mut self, x: &[f32]) -> Result<(f64, Vec<f64>)> {
        self(x)
    }
}

pub struct Lbfgs {
    pub settings: LbfgsSettings,
    pub state: LbfgsState,
}

impl Lbfgs {
    pub fn new(settings: LbfgsSettings) -> Lbfgs {
        Lbfgs { settings, state: LbfgsState::default() }
    }

    /// The search direction `-H g` by the two-loop recursion over the stored pairs, after
    /// adding the pair of the last step (when its curvature `y^T s` is positive).
    fn direction(&mut self, g: &[f64]) -> Vec<f64> {
        let st = &mut self.state;
        if st.iterations == 1 {
            st.y.clear();
            st.s.clear();
            st.ro.clear();
            st.h_diag = 1.0;
            return g.iter().map(|v| -v).collect();
        }
        let y: Vec<f64> = g.iter().zip(&st.prev_grad).map(|(a, b)| a - b).collect();
        let s: Vec<f64> = st.d.iter().map(|v| v * st.t).collect();
        let ys = dot(&y, &s);
        if ys > 1e-10 {
            if st.y.len() == self.settings.history {
                st.y.pop_front();
                st.s.pop_front();
                st.ro.pop_front();
            }
            st.h_diag = ys / dot(&y, &y);
            st.y.push_back(y);
            st.s.push_back(s);
            st.ro.push_back(1.0 / ys);
        }
        self.two_loop(g)
    }

    /// `-H g` by the two-loop recursion over the stored pairs, `H` starting from `h_diag I`:
    /// `4 M P` multiply-adds for M pairs of P values.
    pub fn two_loop(&self, g: &[f64]) -> Vec<f64> {
        let st = &self.state;
        let k = st.y.len();
        let mut al = vec![0.0; k];
        let mut q: Vec<f64> = g.iter().map(|v| -v).collect();
        for i in (0..k).rev() {
            al[i] = dot(&st.s[i], &q) * st.ro[i];
            q.iter_mut().zip(&st.y[i]).for_each(|(qj, yj)| *qj -= al[i] * yj);
        }
        let mut r: Vec<f64> = q.iter().map(|v| v * st.h_diag).collect();
        for (i, al_i) in al.iter().enumerate() {
            let be = dot(&st.y[i], &r) * st.ro[i];
            r.iter_mut().zip(&st.s[i]).for_each(|(rj, sj)| *rj += (al_i - be) * sj);
        }
        r
    }

    /// One iteration from the parameters `x` where J is `f` with gradient `g`: a direction, a
    /// strong Wolfe line search along it, and `x`, `f`, `g` moved to the accepted point.
    pub fn iterate(
        &mut self,
        x: &mut Vec<f32>,
        f: &mut f64,
        g: &mut Vec<f64>,
        obj: &mut impl Objective,
    ) -> Result<Iteration> {
        let tol_change = self.settings.tolerance_change;
        if max_abs(g) <= self.settings.tolerance_grad {
            return Ok(Iteration { t: 0.0, evaluations: 0, stop: Some(Stop::Gradient) });
        }
        self.state.iterations += 1;
        let d = self.direction(g);
        self.state.prev_grad = g.clone();
        self.state.prev_loss = *f;
        let t = if self.state.iterations == 1 {
            (1.0 / g.iter().map(|v| v.abs()).sum::<f64>()).min(1.0) * self.settings.lr
        } else {
            self.settings.lr
        };
        let gtd = dot(g, &d);
        if gtd > -tol_change {
            self.state.d = d;
            self.state.t = t;
            return Ok(Iteration { t, evaluations: 0, stop: Some(Stop::NoDescent) });
        }
        let found = strong_wolfe(obj, x, t, &d, *f, g, gtd, &self.settings)?;
        *x = point(x, found.t, &d);
        *f = found.f;
        *g = found.g;
        self.state.evaluations += found.evaluations as u64;
        let stop = if max_abs(g) <= self.settings.tolerance_grad {
            Some(Stop::Gradient)
        } else if max_abs(&d) * found.t.abs() <= tol_change {
            Some(Stop::Step)
        } else if (*f - self.state.prev_loss).abs() < tol_change {
            Some(Stop::Loss)
        } else {
            None
        };
        self.state.d = d;
        self.state.t = found.t;
        Ok(Iteration { t: found.t, evaluations: found.evaluations, stop })
    }
}

/// PyTorch's `_cubic_interpolate`: the minimiser of the cubic through `(x1, f1)`, `(x2, f2)`
/// with slopes `g1`, `g2`, clamped to `bounds` (default the interval between the points).
pub fn cubic_interpolate(p1: (f64, f64, f64), p2: (f64, f64, f64), bounds: Option<(f64, f64)>) -> f64 {
    let ((x1, f1, g1), (x2, f2, g2)) = (p1, p2);
    let (lo, hi) = bounds.unwrap_or(if x1 <= x2 { (x1, x2) } else { (x2, x1) });
    let d1 = g1 + g2 - 3.0 * (f1 - f2) / (x1 - x2);
    let d2_square = d1 * d1 - g1 * g2;
    if d2_square >= 0.0 {
        let d2 = d2_square.sqrt();
        let min_pos = if x1 <= x2 {
            x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2.0 * d2))
        } else {
            x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2.0 * d2))
        };
        min_pos.max(lo).min(hi)
    } else {
        (lo + hi) / 2.0
    }
}

/// The point a line search accepted.
pub struct Found {
    pub t: f64,
    pub f: f64,
    pub g: Vec<f64>,
    pub evaluations: usize,
}

/// A trial point of the line search: step, J, gradient, and the slope `g^T d` there.
#[derive(Clone)]
struct Trial {
    t: f64,
    f: f64,
    g: Vec<f64>,
    gtd: f64,
}

/// PyTorch's `_strong_wolfe`: from `x` (J `f`, gradient `g`, slope `gtd < 0` along `d`), a step
/// `t` with `J(x + t d) <= f + c1 t gtd` and `|g(x + t d)^T d| <= c2 |gtd|`, found by bracketing
/// with cubic extrapolation, then zooming with cubic interpolation; after `max_line_search`
/// evaluations, the best point of the bracket.
#[allow(clippy::too_many_arguments)]
pub fn strong_wolfe(
    obj: &mut impl Objective,
    x: &[f32],
    t: f64,
    d: &[f64],
    f: f64,
    g: &[f64],
    gtd: f64,
    settings: &LbfgsSettings,
) -> Result<Found> {
    use defaults::{C1, C2};
    let max_ls = settings.max_line_search;
    let d_norm = max_abs(d);
    let mut eval = |t: f64| -> Result<Trial> {
        let (f, g) = obj.evaluate(&point(x, t, d))?;
        let gtd = dot(&g, d);
        Ok(Trial { t, f, g, gtd })
    };
    let mut new = eval(t)?;
    let mut evaluations = 1;
    let mut prev = Trial { t: 0.0, f, g: g.to_vec(), gtd };
    let mut done = false;
    let mut ls_iter = 0;
    // Bracketing: a pair of trials around a point that satisfies the conditions, or one that does.
    let mut bracket: Vec<Trial> = Vec::new();
    while ls_iter < max_ls {
        if new.f > f + C1 * new.t * gtd || (ls_iter > 1 && new.f >= prev.f) {
            bracket = vec![prev, new.clone()];
            break;
        }
        if new.gtd.abs() <= -C2 * gtd {
            bracket = vec![new.clone()];
            done = true;
            break;
        }
        if new.gtd >= 0.0 {
            bracket = vec![prev, new.clone()];
            break;
        }
        let (min_step, max_step) = (new.t + 0.01 * (new.t - prev.t), new.t * 10.0);
        let next_t = cubic_interpolate((prev.t, prev.f, prev.gtd), (new.t, new.f, new.gtd), Some((min_step, max_step)));
        prev = new;
        new = eval(next_t)?;
        evaluations += 1;
        ls_iter += 1;
    }
    if ls_iter == max_ls {
        // PyTorch leaves the slopes of this bracket unset; the zoom below never runs then.
        bracket = vec![Trial { t: 0.0, f, g: g.to_vec(), gtd }, new];
    }
    let order = |b: &[Trial]| if b[0].f <= b[b.len() - 1].f { (0, 1) } else { (1, 0) };
    let (mut low, mut high) = order(&bracket);
    let mut insufficient_progress = false;
    while !done && ls_iter < max_ls {
        if (bracket[1].t - bracket[0].t).abs() * d_norm < settings.tolerance_change {
            break;
        }
        let (b0, b1) = (&bracket[0], &bracket[1]);
        let mut t = cubic_interpolate((b0.t, b0.f, b0.gtd), (b1.t, b1.f, b1.gtd), None);
        let (bmin, bmax) = (b0.t.min(b1.t), b0.t.max(b1.t));
        let eps = 0.1 * (bmax - bmin);
        if (bmax - t).min(t - bmin) < eps {
            // Too near an end: step a tenth of the bracket in from it if the last trial was too.
            if insufficient_progress || t >= bmax || t <= bmin {
                t = if (t - bmax).abs() < (t - bmin).abs() { bmax - eps } else { bmin + eps };
                insufficient_progress = false;
            } else {
                insufficient_progress = true;
            }
        } else {
            insufficient_progress = false;
        }
        let trial = eval(t)?;
        evaluations += 1;
        ls_iter += 1;
        if trial.f > f + C1 * trial.t * gtd || trial.f >= bracket[low].f {
            bracket[high] = trial;
            (low, high) = order(&bracket);
        } else {
            if trial.gtd.abs() <= -C2 * gtd {
                done = true;
            } else if trial.gtd * (bracket[high].t - bracket[low].t) >= 0.0 {
                bracket[high] = bracket[low].clone();
            }
            bracket[low] = trial;
        }
    }
    let best = bracket.swap_remove(low);
    Ok(Found { t: best.t, f: best.f, g: best.g, evaluations })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Rosenbrock function in `n` dimensions, evaluated at the f32 point in f64.
    fn rosenbrock(x: &[f32]) -> Result<(f64, Vec<f64>)> {
        let x: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let n = x.len();
        let mut f = 0.0;
        let mut g = vec![0.0; n];
        for i in 0..n - 1 {
            let (a, b) = (x[i + 1] - x[i] * x[i], 1.0 - x[i]);
            f += 100.0 * a * a + b * b;
            g[i] += -400.0 * x[i] * a - 2.0 * b;
            g[i + 1] += 200.0 * a;
        }
        Ok((f, g))
    }

    #[test]
    fn minimises_rosenbrock_monotonically() {
        let mut x = vec![-1.2f32, 1.0, -1.2, 1.0, 0.5];
        let (mut f, mut g) = rosenbrock(&x).unwrap();
        let start = f;
        let mut opt = Lbfgs::new(LbfgsSettings::new(10, 1.0).unwrap());
        let mut obj = rosenbrock;
        let mut last = f;
        for _ in 0..200 {
            let it = opt.iterate(&mut x, &mut f, &mut g, &mut obj).unwrap();
            // Each accepted step satisfies sufficient decrease, so J never rises.
            assert!(f <= last, "J rose from {last} to {f}");
            last = f;
            if it.stop.is_some() {
                break;
            }
        }
        // f32 parameters limit how close to the minimum (f = 0 at x = 1) the iterates get:
        // near it f grows as 100 (dx)^2 for dx ~ 1e-7 steps, so 1e-9 is a wide margin above that floor.
        assert!(f < 1e-9, "J {f} from {start}");
        assert!(x.iter().all(|&v| (v - 1.0).abs() < 1e-3), "{x:?}");
    }

    #[test]
    fn line_search_meets_the_strong_wolfe_conditions() {
        let x = vec![-1.2f32, 1.0, 0.3];
        let (f, g) = rosenbrock(&x).unwrap();
        let d: Vec<f64> = g.iter().map(|v| -v).collect();
        let gtd = dot(&g, &d);
        let settings = LbfgsSettings::new(5, 1.0).unwrap();
        // A first trial far too long (Armijo fails: zoom) and one far too short (extrapolate).
        for t0 in [1.0, 1e-6] {
            let found = strong_wolfe(&mut rosenbrock, &x, t0, &d, f, &g, gtd, &settings).unwrap();
            let (f_t, g_t) = rosenbrock(&point(&x, found.t, &d)).unwrap();
            assert_eq!((f_t, &g_t), (found.f, &found.g), "the returned J and gradient are those at t");
            assert!(found.f <= f + defaults::C1 * found.t * gtd, "sufficient decrease at t = {}", found.t);
            assert!(dot(&g_t, &d).abs() <= -defaults::C2 * gtd, "curvature at t = {}", found.t);
            assert!(found.evaluations > 1, "t0 = {t0} needed more than one trial");
        }
    }

    #[test]
    fn cubic_interpolation_finds_a_cubic_minimum() {
        // f(t) = (t - 1)^2 has its minimum at 1; from slopes at 0 and 3 the cubic fit is exact.
        let f = |t: f64| (t - 1.0) * (t - 1.0);
        let df = |t: f64| 2.0 * (t - 1.0);
        let t = cubic_interpolate((0.0, f(0.0), df(0.0)), (3.0, f(3.0), df(3.0)), None);
        assert!((t - 1.0).abs() < 1e-12, "{t}");
        // Clamped to the bounds given.
        let t = cubic_interpolate((0.0, f(0.0), df(0.0)), (3.0, f(3.0), df(3.0)), Some((2.0, 5.0)));
        assert_eq!(t, 2.0);
    }

    #[test]
    fn history_is_bounded_and_a_zero_gradient_stops() {
        let mut x = vec![-1.2f32, 1.0, -1.2, 1.0];
        let (mut f, mut g) = rosenbrock(&x).unwrap();
        let mut opt = Lbfgs::new(LbfgsSettings::new(3, 1.0).unwrap());
        for _ in 0..10 {
            opt.iterate(&mut x, &mut f, &mut g, &mut rosenbrock).unwrap();
            assert!(opt.state.y.len() <= 3 && opt.state.s.len() == opt.state.y.len());
        }
        assert_eq!(opt.state.y.len(), 3);
        let mut at_min = vec![1.0f32; 4];
        let (mut f, mut g) = rosenbrock(&at_min).unwrap();
        let it = opt.iterate(&mut at_min, &mut f, &mut g, &mut rosenbrock).unwrap();
        assert_eq!((it.evaluations, it.stop), (0, Some(Stop::Gradient)));
        assert!(LbfgsSettings::new(0, 1.0).is_err() && LbfgsSettings::new(10, 0.0).is_err());
    }
}
