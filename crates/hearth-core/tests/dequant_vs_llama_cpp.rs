//! Block formats against llama.cpp's formulas (as ported to Python in its `gguf` package): every decoded
//! value must be bit-identical, and the lossless re-packing into Hearth's q4/q8/q4k/q5k/q6k must keep
//! it so (also after the package's serialization).

mod common;

use hearth_core::ggml_quants::{dequantize, k_from_ggml, q4_from_ggml, q5_from_ggml, q8_from_ggml};
use hearth_core::gguf::GgmlType;
use hearth_core::package::Package;
use hearth_core::quant::Tensor;

fn ggml_type(name: &str) -> GgmlType {
    match name {
        "Q4_0" => GgmlType::Q4_0,
        "Q4_1" => GgmlType::Q4_1,
        "Q5_0" => GgmlType::Q5_0,
        "Q5_1" => GgmlType::Q5_1,
        "Q8_0" => GgmlType::Q8_0,
        "Q4_K" => GgmlType::Q4K,
        "Q5_K" => GgmlType::Q5K,
        "Q6_K" => GgmlType::Q6K,
        other => panic!("fixture names unknown type {other}"),
    }
}

fn bits(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

#[test]
fn every_block_type_decodes_bit_exactly() {
    let fx = common::fixture("smollm2/dequant.json");
    let blocks = fx["blocks"].as_array().unwrap();
    assert_eq!(blocks.len(), 8, "Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q4_K Q5_K Q6_K");
    let mut repacked_types = Vec::new();
    for case in blocks {
        let name = case["type"].as_str().unwrap();
        let ty = ggml_type(name);
        let raw = hex(case["raw_hex"].as_str().unwrap());
        let expected = bits(&case["f32_bits"]);
        let got: Vec<u32> = dequantize(ty, &raw, name).unwrap().iter().map(|v| v.to_bits()).collect();
        assert_eq!(got, expected, "{name}");

        let shape: Vec<usize> =
            case["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        let repacked = match ty {
            GgmlType::Q4_0 | GgmlType::Q4_1 => Some(q4_from_ggml(ty, &raw, shape, name).unwrap()),
            GgmlType::Q5_0 | GgmlType::Q5_1 => Some(q5_from_ggml(ty, &raw, shape, name).unwrap()),
            GgmlType::Q8_0 => Some(q8_from_ggml(&raw, shape)),
            GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => Some(k_from_ggml(ty, &raw, shape, name).unwrap()),
            _ => None,
        };
        if let Some(t) = repacked {
            repacked_types.push(t.dtype().name());
            // Through the package's bytes and back, as a loader reads it.
            let (bytes, _) = t.to_bytes();
            let t = Tensor::from_bytes(name, t.shape.clone(), t.dtype(), t.group_size(), &bytes).unwrap();
            let got: Vec<f32> = t.to_f32();
            for (i, (g, &e)) in got.iter().zip(&expected).enumerate() {
                let e = f32::from_bits(e);
                // Bit for bit, with one exception: llama.cpp's Q4_0 computes (8 - 8) * d = -0.0 when d < 0
                // (Q5_0: (16 - 16) * d), where q * s + m gives +0.0. Equal as numbers; no product or sum
                // can tell them apart except the sign of an exactly-zero result.
                let offset = matches!(ty, GgmlType::Q4_0 | GgmlType::Q5_0);
                let same = g.to_bits() == e.to_bits() || (offset && *g == 0.0 && e == 0.0);
                assert!(same, "{name} re-packed into Hearth's encoding, value {i}: {g:e} vs llama.cpp {e:e}");
            }
        }
    }
    assert_eq!(repacked_types, ["q4", "q4", "q5", "q5", "q8", "q4k", "q5k", "q6k"]);
}

#[test]
fn converted_model_tensors_decode_to_llama_cpp_values() {
    let fx = common::fixture("smollm2/dequant.json");
    let package = Package::open(common::smollm2_package()).unwrap();
    let tensors = package.load_tensors().unwrap();
    let cases = fx["model_tensors"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let t = &tensors[name];
        let rows = case["rows"].as_u64().unwrap() as usize;
        let mut got = vec![0f32; rows * t.cols()];
        for (r, row) in got.chunks_mut(t.cols()).enumerate() {
            t.dequantize_row(r, row);
        }
        let got: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
        assert_eq!(got, bits(&case["f32_bits"]), "{name} ({})", case["type"]);
    }
}
