"""The throughput load generator: worker processes that drive groups of 4 members at a set rate.

Cheap per delivered message by construction (it shares one core with every other load process):

- senders seal every packet of a step before the step starts (counters ascending, `batch`
  100-byte SENDs coalesced per packet, as a client coalesces what one loop pass produced), then
  the timed window only calls send();
- receivers read with non-blocking recv() and count delivered MESSAGEs from the packet length
  (every MESSAGE has the same size, so a packet of N bytes holds (N - 32) / L of them); one
  packet in `sample_every` is decrypted to check it and to read send timestamps for latency.
  A packet whose length does not fit is decrypted and parsed in full (membership news etc.).
- in "full" mode (the half-load latency step) every packet is decrypted, every message's
  latency recorded and every sender's sequence numbers tracked (loss, duplicates, reordering).
  Packets are held as read (with their receive clock and kernel stamp) and decrypted after the
  timed window: decrypting them in it made the one load core late with its sends, and a late
  sender sends in bursts that queue at the relay, which the added latency then charged to it.
  That step measures two latencies per message. End to end: the receiver's clock when it got
  round to the packet minus the packet's scheduled send time (what a player of this load
  generator sees, its own lag included). Added: the kernel's receive timestamp of the packet
  (SO_TIMESTAMPNS, read with recvmsg) minus the time.time_ns() taken just before the send()
  that handed the packet to the kernel, both CLOCK_REALTIME on one host: the relay's queueing
  and processing plus loopback, without the sender being late or the receiver being busy.
  Both ends are in this process (a group's members all live in one worker), so the receiver
  looks the send time up by (sender index, packet index). The sampled saturation steps keep
  plain recv() (recvmsg costs about 1 us more per packet) and record no send times.

The modules, by job:

- `spec`: what the harness hands a worker (its groups of members, payload size, batch).
- `messages`: the SEND bytes senders build and the MESSAGE size receivers count by.
- `rxstamps`: the kernel's receive timestamps (SO_TIMESTAMPNS) of what a socket reads.
- `member`: one member's schedule and counters for the current step.
- `sender`: sealing a step's packets before it starts, and sending those due in its window.
- `receiver`: reading, counting and sampling what arrives; decrypting what full mode held.
- `results`: a worker's figures for one step, from its members' counters.
- `worker`: the process: connect, build a step, run its timed window, report, quiesce; it talks
  to the harness (loadtest/scenarios/throughput.py) over a multiprocessing Connection.
"""
