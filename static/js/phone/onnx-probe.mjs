// The overhead probe: an ONNX model that only copies its float input (one Identity node), built
// here for any input shape. Timed like a layer of that input, its time is what onnxruntime-web
// spends per call around the computation (copying the input in and the output out, the call from
// JavaScript into WebAssembly), the part of a layer's entry that is not the layer.
//
// Written directly as protobuf (the few fields of onnx.proto3 a model needs), so the worker needs
// no ONNX library; tests/test_phone_js.py checks the bytes with onnx's checker and runs them in
// Python's ONNX Runtime.

const IR_VERSION = 8;
const OPSET = 17;
const FLOAT = 1;  // TensorProto.DataType.FLOAT

function varint(value) {
  const bytes = [];
  let rest = BigInt(value);
  do {
    let byte = Number(rest & 0x7fn);
    rest >>= 7n;
    if (rest > 0n) byte |= 0x80;
    bytes.push(byte);
  } while (rest > 0n);
  return bytes;
}

const integerField = (number, value) => [...varint(number << 3), ...varint(value)];
const bytesField = (number, bytes) => [...varint((number << 3) | 2), ...varint(bytes.length), ...bytes];
const stringField = (number, text) => bytesField(number, [...new TextEncoder().encode(text)]);

function valueInfo(name, shape) {
  const dims = shape.flatMap((size) => bytesField(1, integerField(1, size)));           // Dimension.dim_value
  const tensorType = [...integerField(1, FLOAT), ...bytesField(2, dims)];               // elem_type, shape
  return [...stringField(1, name), ...bytesField(2, bytesField(1, tensorType))];        // name, type.tensor_type
}

/** The bytes of an ONNX model y = Identity(x), x and y float tensors of ``shape``. */
export function identityModel(shape) {
  if (!Array.isArray(shape) || shape.length === 0 || !shape.every((size) => Number.isInteger(size) && size >= 1)) {
    throw new RangeError(`an input shape is a list of sizes >= 1, got ${JSON.stringify(shape)}`);
  }
  const node = [...stringField(1, "x"), ...stringField(2, "y"), ...stringField(4, "Identity")];
  const graph = [...bytesField(1, node), ...stringField(2, "overhead_probe"),
                 ...bytesField(11, valueInfo("x", shape)), ...bytesField(12, valueInfo("y", shape))];
  const opset = [...stringField(1, ""), ...integerField(2, OPSET)];
  return new Uint8Array([...integerField(1, IR_VERSION), ...stringField(2, "netadapt-browser"),
                         ...bytesField(7, graph), ...bytesField(8, opset)]);
}
