//! Adam (Kingma & Ba 2015). Each parameter keeps its own two moments, so the
//! rule stays local to the synapse: it rescales a gradient estimate, whatever
//! made it (backprop, or EP's contrast of two equilibria).

const BETA1: f32 = 0.9;
const BETA2: f32 = 0.999;
const EPS: f32 = 1e-8;

/// One Adam step of rate `lr` on `p` with gradient `g`; `m` and `v` are the
/// moments, `t` the 1-based step count (for the bias correction).
pub fn adam_step(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], lr: f32, t: f32) {
    let c1 = 1.0 - BETA1.powf(t);
    let c2 = 1.0 - BETA2.powf(t);
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        *m = BETA1 * *m + (1.0 - BETA1) * g;
        *v = BETA2 * *v + (1.0 - BETA2) * g * g;
        *p -= lr * (*m / c1) / ((*v / c2).sqrt() + EPS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_step_moves_each_parameter_by_the_rate_against_its_gradient_sign() {
        // After one step the bias-corrected m / sqrt(v) is g / |g|.
        let mut p = vec![1.0, 1.0, 1.0];
        let (mut m, mut v) = (vec![0.0; 3], vec![0.0; 3]);
        adam_step(&mut p, &[2.0, -0.5, 0.0], &mut m, &mut v, 0.1, 1.0);
        assert!(
            (p[0] - 0.9).abs() < 1e-6 && (p[1] - 1.1).abs() < 1e-6,
            "{p:?}"
        );
        assert_eq!(p[2], 1.0);
    }

    #[test]
    fn minimises_a_quadratic() {
        let mut p = vec![3.0f32, -2.0];
        let (mut m, mut v) = (vec![0.0; 2], vec![0.0; 2]);
        for t in 1..=2000 {
            let g: Vec<f32> = p.iter().map(|&x| 2.0 * (x - 0.5)).collect();
            adam_step(&mut p, &g, &mut m, &mut v, 0.01, t as f32);
        }
        assert!(p.iter().all(|&x| (x - 0.5).abs() < 1e-2), "{p:?}");
    }
}
