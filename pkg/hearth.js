// hearth-web: run Hearth model packages in the browser on WebGPU. The public API; the pieces live
// in src/ (see docs/WEB.md in the repository for the layers under it).

import { load } from "./src/load.js";
import { loadInWorker } from "./src/worker-proxy.js";
import { support } from "./src/support.js";
import { inspect } from "./src/inspect.js";
import { cache } from "./src/cache.js";

export { load, loadInWorker, support, inspect, cache };
export { HearthEngine } from "./src/engine.js";
export {
  HearthError,
  WebGPUUnavailableError,
  AdapterLimitsError,
  QuotaExceededError,
  IntegrityError,
  NetworkError,
  UnsupportedModelError,
  ContextLengthError,
  BadPackageError,
  InvalidArgumentError,
  GpuError,
  OutOfMemoryError,
  EngineDisposedError,
} from "./src/errors.js";

export const Hearth = Object.freeze({ load, loadInWorker, support, inspect, cache });
export default Hearth;
