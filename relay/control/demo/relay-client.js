// Built from clients/js by `npm run bundle` (esbuild); do not edit.
import {
  ConnectionError,
  JoinRefusedError,
  RelayClient,
  connect,
  relayUrl
} from "./relay-shared-W6BEB4QG.js";
import {
  CloseReason,
  ErrorCode,
  LeaveReason,
  fromBase64Url,
  toBase64Url
} from "./relay-shared-TCXYUL36.js";
export {
  CloseReason,
  ConnectionError,
  ErrorCode,
  JoinRefusedError,
  LeaveReason,
  RelayClient,
  connect,
  fromBase64Url,
  relayUrl,
  toBase64Url
};
