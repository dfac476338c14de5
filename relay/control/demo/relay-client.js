// Built from clients/js by `npm run bundle` (esbuild); do not edit.
import {
  ConnectionError,
  JoinRefusedError,
  RelayClient,
  connect,
  relayUrl
} from "./relay-shared-GYOPOJK2.js";
import {
  CloseReason,
  ErrorCode,
  LeaveReason,
  fromBase64Url,
  toBase64Url
} from "./relay-shared-SPV2KNSY.js";
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
