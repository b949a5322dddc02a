//! plasticity's CartPole against episodes recorded from Gymnasium's own
//! CartPole-v1 (tests/fixtures/record_cartpole.py made the fixture): the same
//! actions from the same start give the same states (to the bit: the dynamics
//! follow Gymnasium's order of operations), observations, rewards and episode
//! ends, step for step.

use plasticity::rl::cartpole::CartPole;
use serde_json::Value;

#[test]
fn cartpole_matches_gymnasium_step_for_step() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/cartpole_v1.json"
    ))
    .unwrap();
    let fixture: Value = serde_json::from_str(&text).unwrap();
    let floats = |v: &Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    let episodes = fixture["episodes"].as_array().unwrap();
    assert_eq!(episodes.len(), 2);
    let mut ends = Vec::new();
    for ep in episodes {
        let start = floats(&ep["start_state"]);
        let mut env = CartPole::from_state([start[0], start[1], start[2], start[3]]);
        let steps = ep["steps"].as_array().unwrap();
        for (t, s) in steps.iter().enumerate() {
            let got = env.step(s["action"].as_u64().unwrap() as usize);
            for (a, b) in env.state.iter().zip(floats(&s["state"])) {
                assert!(
                    (a - b).abs() <= 1e-12 * (1.0 + b.abs()),
                    "step {t}: state {a} vs {b}"
                );
            }
            // Gymnasium's f32 observation, printed in JSON as f64: equal once back in f32.
            for (a, b) in got.observation.iter().zip(floats(&s["observation"])) {
                assert_eq!(*a, b as f32, "step {t}: observation");
            }
            assert_eq!(got.reward as f64, s["reward"].as_f64().unwrap());
            assert_eq!(
                got.terminated,
                s["terminated"].as_bool().unwrap(),
                "step {t}"
            );
            assert_eq!(got.truncated, s["truncated"].as_bool().unwrap(), "step {t}");
        }
        ends.push((
            steps.len(),
            steps.last().unwrap()["terminated"].as_bool().unwrap(),
        ));
    }
    // One episode runs to the 500-step cap, the other ends with the pole down.
    assert_eq!(ends, vec![(500, false), (9, true)]);
}
