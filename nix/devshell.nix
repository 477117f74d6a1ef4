# `nix develop`: the pinned toolchain, everything the checks need, and the tools the justfile
# recipes call. It starts nothing: `just nats` or `just up` do that.
{
  pkgs,
  common,
  checks,
}:
common.craneLib.devShell {
  # the inputs of every check (cargo-nextest, cargo-deny, cargo-audit, nats-server, nginx, ...)
  inherit checks;

  packages = [
    pkgs.just
    pkgs.nats-server
    pkgs.natscli
    pkgs.nginx
    pkgs.cargo-nextest
    pkgs.cargo-deny
    pkgs.alejandra
    pkgs.deadnix
  ];

  shellHook = ''
    export NATS_URL=nats://127.0.0.1:4222
    just --list 2>/dev/null || true
  '';
}
