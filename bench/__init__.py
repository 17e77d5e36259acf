"""Benchmark tooling for edgetftp (issue 5): a TFTP load generator, peer servers under test, a runner.

Modules:
  loadgen  asyncio TFTP client sessions at scale (RFC 1350/2347/2348/2349/7440), JSON summary
  peers    starting edgetftp and tftpd-hpa pinned to a CPU, and measuring their CPU and memory
  run      the side-by-side scenarios (S1, S2, S3, memory, start-up, S3 source) and the table
  report   the table formatter and the edgetftp/tftpd-hpa ratio
  stats    percentiles and medians
  pingpong the lock-step ceiling of the loopback: a UDP ping-pong across two CPUs
"""
