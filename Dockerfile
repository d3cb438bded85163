# ambassador's image: the `ambassador` binary and the shared libraries it loads, nothing else.
# FROM scratch needs no registry. Build the root filesystem first, then the image:
#
#   cargo xtask image                    # target/image/rootfs, then `docker build` of this file
#   docker build -t ambassador .         # or by hand, once target/image/rootfs exists
#
# How to run it (capabilities, mounts, host network): README.md and docker-compose.yml.
FROM scratch
COPY target/image/rootfs/ /
ENTRYPOINT ["/usr/local/bin/ambassador"]
CMD ["--help"]
LABEL org.opencontainers.image.title="ambassador" \
      org.opencontainers.image.description="A kernel-accelerated dynamic ambassador (eBPF)"
