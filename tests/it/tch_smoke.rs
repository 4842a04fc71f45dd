//! Proves libtorch links and works: tensor math, autograd, and a safetensors round trip.
use tch::{Device, Kind, Tensor};

#[test]
fn matmul_backward_is_exact() {
    // y = sum((A x)^2) ; dy/dx = 2 A^T A x
    let a = Tensor::from_slice(&[1.0f64, 2.0, 3.0, 4.0]).reshape([2, 2]);
    let x = Tensor::from_slice(&[0.5f64, -1.0]).set_requires_grad(true);
    let y = a.mv(&x).square().sum(Kind::Double);
    y.backward();
    let grad = Vec::<f64>::try_from(x.grad()).expect("grad to vec");
    // A x = [-1.5, -2.5]; 2 A^T (A x) = 2 * [1*-1.5 + 3*-2.5, 2*-1.5 + 4*-2.5] = [-18, -26]
    assert_eq!(grad, vec![-18.0, -26.0]);
    assert_eq!(
        f64::try_from(y).expect("scalar"),
        1.5f64.powi(2) + 2.5f64.powi(2)
    );
}

#[test]
fn safetensors_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.safetensors");
    let w = Tensor::randn([3, 5], (Kind::Float, Device::Cpu));
    let b = Tensor::arange(7, (Kind::Int64, Device::Cpu));
    Tensor::write_safetensors(&[("w", &w), ("b", &b)], &path).expect("write");
    let loaded = Tensor::read_safetensors(&path).expect("read");
    assert_eq!(loaded.len(), 2);
    for (name, t) in loaded {
        let orig = if name == "w" { &w } else { &b };
        assert_eq!(t.size(), orig.size(), "{name}");
        assert!(t.equal(orig), "{name} differs after round trip");
    }
}
