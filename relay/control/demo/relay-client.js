// Built from clients/js by `npm run bundle` (esbuild); do not edit.
import {
  ConnectionError,
  JoinRefusedError,
  RelayClient,
  connect,
  relayUrl
} from "./relay-shared-ZLOXEWXQ.js";
import {
  CloseReason,
  ErrorCode,
  LeaveReason,
  fromBase64Url,
  toBase64Url
} from "./relay-shared-LKKLOGMY.js";
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
