{
  description = "Coreiix: an axum HTTP service run as N workers sharing one systemd socket";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;

      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});

      fs = lib.fileset;

      # What the package is built from: an edit elsewhere (tests/, bench/, docs, CI, the Nix
      # files) does not rebuild it.
      packageFiles = fs.unions [
        ./Cargo.toml
        ./Cargo.lock
        ./src
        # The units and systemd/install.sh, which decides what an installation contains.
        ./systemd
        # install.sh installs it as share/coreiix/coreiix.env.example.
        ./.env.example
      ];

      # clippy and rustfmt also see the integration tests and the tools' configuration.
      lintFiles = fs.unions [
        packageFiles
        (fs.maybeMissing ./tests)
        (fs.maybeMissing ./benches)
        (fs.maybeMissing ./examples)
        (fs.maybeMissing ./build.rs)
        (fs.maybeMissing ./rustfmt.toml)
        (fs.maybeMissing ./.rustfmt.toml)
        (fs.maybeMissing ./clippy.toml)
      ];

      toSource =
        fileset:
        fs.toSource {
          root = ./.;
          inherit fileset;
        };

      # A callPackage-style function, so the flake outputs and the overlay build the same thing.
      coreiixPackage =
        { lib, rustPlatform }:
        rustPlatform.buildRustPackage {
          pname = "coreiix";
          version = (lib.importTOML ./Cargo.toml).package.version;
          src = toSource packageFiles;
          cargoLock.lockFile = ./Cargo.lock;

          # Unit tests only. The integration tests in tests/ drive the built binaries, systemd
          # and root (tests/support/systemd-box.sh boots a systemd as PID 1), none of which the
          # build sandbox has; CI runs them outside Nix.
          cargoTestFlags = [ "--lib" ];

          # The unit files (@bindir@ = $out/bin), the generator link and the example config are
          # whatever systemd/install.sh installs, so a Nix install and an install.sh install
          # cannot drift apart. cargo has already put both binaries in $out/bin, hence
          # --no-binaries; --no-config because /etc belongs to the system (the NixOS module
          # writes /etc/coreiix/coreiix.env).
          postInstall = ''
            bash systemd/install.sh --prefix "$out" --no-binaries --no-config
          '';

          meta = {
            description = "An axum HTTP service run as N worker processes sharing one listening socket";
            license = [
              lib.licenses.mit
              lib.licenses.asl20
            ];
            platforms = lib.platforms.linux;
            mainProgram = "coreiix-plan";
          };
        };

      # `nix run`: serve the project on 127.0.0.1:8000 with the dev profile.
      devServer =
        pkgs: coreiix:
        pkgs.writeShellApplication {
          name = "coreiix-dev";
          runtimeInputs = [
            coreiix
            pkgs.cargo
            pkgs.rustc
            # rustc links through cc.
            pkgs.stdenv.cc
            pkgs.systemfd
            pkgs.watchexec
          ];
          text = ''
            # True in a checkout of this project: a Cargo.toml whose [package] is coreiix.
            in_checkout() {
              local line section=""
              [ -f Cargo.toml ] || return 1
              while IFS= read -r line; do
                case $line in
                  "["*) section=$line ;;
                  name*=*)
                    if [ "$section" = "[package]" ]; then
                      [[ $line =~ ^name[[:space:]]*=[[:space:]]*\"coreiix\"[[:space:]]*$ ]]
                      return
                    fi
                    ;;
                esac
              done <Cargo.toml
              return 1
            }

            if in_checkout; then
              # systemfd owns the socket, so it stays open while the dev profile's launcher
              # rebuilds and restarts the worker (cargo, watchexec) on every change.
              exec systemfd --no-pid -b 1024 -s http::127.0.0.1:8000 -- \
                coreiix-plan up --profile dev "$@"
            fi
            exec coreiix-plan up --profile dev "$@"
          '';
        };

      # Every *.nix file of the flake, for the formatting and lint checks.
      nixSource = toSource (fs.fileFilter (file: file.hasExt "nix") ./.);
    in
    {
      overlays.default = final: _prev: { coreiix = final.callPackage coreiixPackage { }; };

      packages = forAllSystems (
        pkgs:
        let
          coreiix = pkgs.callPackage coreiixPackage { };
        in
        {
          inherit coreiix;
          default = coreiix;
        }
      );

      apps = forAllSystems (pkgs: {
        default = {
          type = "app";
          program = lib.getExe (devServer pkgs self.packages.${pkgs.stdenv.hostPlatform.system}.default);
          meta.description = "Serve Coreiix on 127.0.0.1:8000 with the dev profile";
        };
      });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = [
            pkgs.rustc
            pkgs.cargo
            pkgs.clippy
            pkgs.rustfmt
            pkgs.rust-analyzer
            pkgs.systemfd
            pkgs.watchexec
            pkgs.nixfmt
            pkgs.deadnix
            pkgs.wrk
          ];
          # Where rust-analyzer finds the standard library's source.
          RUST_SRC_PATH = "${pkgs.rustPlatform.rustLibSrc}";
        };
      });

      # A function, not a bare path: Nix 2.8 rejects a path here.
      nixosModules.default =
        { pkgs, ... }:
        {
          imports = [ ./nixos/module.nix ];
          services.coreiix.package = lib.mkDefault (
            self.packages.${pkgs.stdenv.hostPlatform.system}.default or (pkgs.callPackage coreiixPackage { })
          );
        };

      checks = forAllSystems (
        pkgs:
        let
          coreiix = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
          lintSource = toSource lintFiles;
        in
        {
          package = coreiix;

          # The package's derivation (same vendored crates) with clippy as its build.
          clippy = coreiix.overrideAttrs (old: {
            pname = "coreiix-clippy";
            src = lintSource;
            nativeBuildInputs = old.nativeBuildInputs ++ [ pkgs.clippy ];
            buildPhase = ''
              runHook preBuild
              cargo clippy --offline --locked --all-targets -- -D warnings
              runHook postBuild
            '';
            doCheck = false;
            installPhase = "touch $out";
            dontFixup = true;
          });

          fmt =
            pkgs.runCommand "coreiix-fmt"
              {
                nativeBuildInputs = [
                  pkgs.cargo
                  pkgs.rustfmt
                ];
              }
              ''
                cp -r ${lintSource} source
                chmod -R u+w source
                cd source
                HOME=$TMPDIR cargo fmt --check
                touch $out
              '';

          nixfmt = pkgs.runCommand "coreiix-nixfmt" { nativeBuildInputs = [ pkgs.nixfmt ]; } ''
            find ${nixSource} -name '*.nix' -exec nixfmt --check {} +
            touch $out
          '';

          deadnix = pkgs.runCommand "coreiix-deadnix" { nativeBuildInputs = [ pkgs.deadnix ]; } ''
            deadnix --fail ${nixSource}
            touch $out
          '';

          vm = import ./nixos/tests/coreiix.nix {
            inherit pkgs;
            module = self.nixosModules.default;
          };
        }
      );
    };
}
