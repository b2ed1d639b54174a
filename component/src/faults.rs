//! Deliberate guest faults for the host's isolation tests, only in
//! builds with the `fault-injection` feature.

pub fn inject(key: &str) {
    match key {
        "fault:trap" => core::arch::wasm32::unreachable(),
        "fault:loop" => {
            let mut n = 0u64;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        "fault:oom" => {
            let mut hog: Vec<Vec<u8>> = Vec::new();
            loop {
                hog.push(vec![1u8; 16 << 20]);
                std::hint::black_box(&hog);
            }
        }
        _ => {}
    }
}
