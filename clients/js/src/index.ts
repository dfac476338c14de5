/**
 * @gs2relay/client: join a gs2-relay room over WebSocket from a browser or Node.
 *
 *     import { connect, relayUrl } from "@gs2relay/client";
 *     const client = await connect(relayUrl(room.ipAddress, room.port), room.encryptionKey, "alice");
 *     client.on("message", ({ sender, data }) => ...);
 *     client.send("hello");
 *
 * The wire protocol itself (key schedule, packets, messages) is "@gs2relay/client/protocol".
 */

export {
  connect,
  relayUrl,
  ConnectionError,
  JoinRefusedError,
  RelayClient,
  RESUMED_ELSEWHERE,
  type ChannelStats,
  type ConnectOptions,
  type Limits,
  type Member,
  type Payload,
  type RelayEventName,
  type RelayEvents,
  type RelayUrlOptions,
  type WebSocketConstructor,
} from "./client.js";
export { CloseReason, ErrorCode, LeaveReason, WELCOME_ENTRY_BYTES } from "./protocol.js";
export { fromBase64Url, toBase64Url } from "./bytes.js";
