//! Loading an HF checkpoint refuses what would train the wrong model: a config.json with fewer
//! layers than the weights, and weights holding NaN or infinities (named by tensor).

use std::path::Path;

use cures::policy::Policy;
use tch::{Device, Kind, Tensor};

fn copy_policy(to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/testbed-policy");
    for f in std::fs::read_dir(&from).expect("assets/testbed-policy") {
        let f = f.expect("entry").path();
        std::fs::copy(&f, to.join(f.file_name().expect("name"))).expect("copy");
    }
}

#[test]
fn a_config_with_fewer_layers_than_the_checkpoint_is_an_error() {
    let t = tempfile::tempdir().expect("tempdir");
    let dir = t.path().join("m");
    copy_policy(&dir);
    assert!(Policy::load(&dir, Device::Cpu, Kind::Float).is_ok());
    let cj = dir.join("config.json");
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cj).expect("read")).expect("json");
    let layers = c["num_hidden_layers"].as_i64().expect("layers");
    c["num_hidden_layers"] = (layers - 1).into();
    std::fs::write(&cj, c.to_string()).expect("write");
    let e = format!(
        "{:#}",
        Policy::load(&dir, Device::Cpu, Kind::Float).unwrap_err()
    );
    assert!(
        e.contains(&format!("layer {}", layers - 1)) && e.contains("declares num_hidden_layers"),
        "{e}"
    );
}

#[test]
fn weights_with_nan_are_named_by_tensor() {
    let t = tempfile::tempdir().expect("tempdir");
    let dir = t.path().join("m");
    copy_policy(&dir);
    let f = dir.join("model.safetensors");
    let mut tensors = Tensor::read_safetensors(&f).expect("read");
    let target = "model.layers.0.mlp.up_proj.weight";
    let k = tensors
        .iter()
        .position(|(n, _)| n == target)
        .expect("tensor present");
    let poisoned = tensors[k].1.copy();
    let _ = poisoned.view([-1]).get(3).fill_(f64::NAN);
    tensors[k].1 = poisoned;
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    Tensor::write_safetensors(&refs, &f).expect("write");
    let e = format!(
        "{:#}",
        Policy::load(&dir, Device::Cpu, Kind::Float).unwrap_err()
    );
    assert!(e.contains(target) && e.contains("NaN"), "{e}");
}
