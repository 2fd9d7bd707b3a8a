// A measurement request's files as the server sends them to an agent: a zip holding
// manifest.json ({request, layers: [{index, file, input_shape, label}], networks: [...]}) and one
// ONNX file per entry (devices/agent/client.py read_manifest reads the same, and checks the same).
// Pure: the unzip function (fflate's unzipSync) is passed in, so node tests and the worker share it.

const MAX_DIMS = 8;
const MAX_SIZE = 1 << 20;

export class RequestFilesError extends Error {}

function modelEntry(entry, files, what) {
  if (entry === null || typeof entry !== "object" || Array.isArray(entry)) {
    throw new RequestFilesError(`manifest: ${what} must be an object`);
  }
  const { index, file, input_shape: shape, label = "" } = entry;
  if (!Number.isInteger(index) || index < 0) throw new RequestFilesError(`manifest: ${what}.index must be an integer >= 0`);
  if (!Array.isArray(shape) || shape.length < 1 || shape.length > MAX_DIMS
      || !shape.every((size) => Number.isInteger(size) && size >= 1 && size <= MAX_SIZE)) {
    throw new RequestFilesError(`manifest: ${what}.input_shape must be a list of 1 to ${MAX_DIMS} sizes`);
  }
  if (typeof file !== "string" || !Object.hasOwn(files, file)) {
    throw new RequestFilesError(`manifest: ${what} names ${JSON.stringify(file)}, which the zip does not hold`);
  }
  return { index, input_shape: shape, label: String(label), bytes: files[file] };
}

/**
 * The layers and networks of a request's zip: [{index, input_shape, label, bytes}], checked
 * against the zip's file list.
 * @param {Uint8Array} zipBytes
 * @param {number} requestId
 * @param {(data: Uint8Array) => Record<string, Uint8Array>} unzip
 */
export function readRequestFiles(zipBytes, requestId, unzip) {
  let files;
  try {
    files = unzip(zipBytes);
  } catch (error) {
    throw new RequestFilesError(`the request's files are not a zip: ${error.message}`);
  }
  let manifest;
  try {
    manifest = JSON.parse(new TextDecoder().decode(files["manifest.json"]));
  } catch (error) {
    throw new RequestFilesError(`the request's zip has no readable manifest.json: ${error.message}`);
  }
  if (manifest === null || typeof manifest !== "object" || manifest.request !== requestId) {
    throw new RequestFilesError(`the manifest is not the one of request ${requestId}`);
  }
  const layers = (manifest.layers ?? []).map((e, i) => modelEntry(e, files, `layers[${i}]`));
  const networks = (manifest.networks ?? []).map((e, i) => modelEntry(e, files, `networks[${i}]`));
  if (!networks.every((network, i) => network.index === i)) {
    throw new RequestFilesError("manifest: the networks must be numbered 0, 1, ... in order");
  }
  return { layers, networks };
}
