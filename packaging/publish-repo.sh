#!/bin/sh
# Turn built packages into a signed apt repository and a signed dnf repository that a web server
# (or cloud-init, docs/usage/install.md) can use as they are:
#
#   OUT/deb/dists/SUITE/{Release,InRelease,Release.gpg}, dists/SUITE/main/binary-amd64/Packages{,.gz}
#   OUT/deb/pool/SUITE/kupd_*.deb              one suite per release the .deb was built for
#   OUT/deb/kupd-archive-keyring.{asc,gpg}     the public key (armored for cloud-init, binary for signed-by=)
#   OUT/rpm/x86_64/kupd-*.rpm                   signed rpms (rpmsign)
#   OUT/rpm/x86_64/repodata/repomd.xml{,.asc}   createrepo_c metadata, detached signature
#   OUT/rpm/RPM-GPG-KEY-kupd                    the public key for gpgkey=
#
# Usage: packaging/publish-repo.sh OUT PACKAGE...
#   a PACKAGE is SUITE=path/to/kupd_*.deb (apt; e.g. bookworm=…+deb12_amd64.deb) or path/to/kupd-*.rpm
# Signing: the secret key KUPD_SIGNING_KEY (fingerprint or user id) in GNUPGHOME (default ~/.gnupg).
# An existing OUT is updated: packages already there stay, the indexes and signatures are redone.
set -eu
out=${1:?usage: publish-repo.sh OUT SUITE=DEB... RPM...}
shift
key=${KUPD_SIGNING_KEY:?set KUPD_SIGNING_KEY to the signing key (fingerprint or user id in GNUPGHOME)}
for tool in gpg apt-ftparchive createrepo_c rpmsign; do
    command -v "$tool" >/dev/null || { echo "publish-repo: $tool is missing (apt-utils, createrepo-c, rpm, gpg)" >&2; exit 1; }
done
gpg --batch --list-secret-keys "$key" >/dev/null 2>&1 || { echo "publish-repo: no secret key $key" >&2; exit 1; }
mkdir -p "$out/deb" "$out/rpm/x86_64"
out=$(cd "$out" && pwd)

rpms=""
for arg in "$@"; do
    case "$arg" in
        *=*.deb)
            suite=${arg%%=*}; deb=${arg#*=}
            case "$suite" in *[!a-z0-9-]*|"") echo "publish-repo: bad suite name '$suite'" >&2; exit 1;; esac
            mkdir -p "$out/deb/pool/$suite"
            cp "$deb" "$out/deb/pool/$suite/" ;;
        *.rpm)
            cp "$arg" "$out/rpm/x86_64/"
            rpms="$rpms $out/rpm/x86_64/$(basename "$arg")" ;;
        *) echo "publish-repo: '$arg' is neither SUITE=FILE.deb nor FILE.rpm" >&2; exit 1 ;;
    esac
done

# apt: one suite per folder under pool/, indexes and a signed Release per suite.
gpg --batch --yes --armor --export "$key" >"$out/deb/kupd-archive-keyring.asc"
gpg --batch --yes --export "$key" >"$out/deb/kupd-archive-keyring.gpg"
for pool in "$out"/deb/pool/*/; do
    [ -d "$pool" ] || continue
    suite=$(basename "$pool")
    dist="$out/deb/dists/$suite"
    mkdir -p "$dist/main/binary-amd64"
    (cd "$out/deb" && apt-ftparchive packages "pool/$suite") >"$dist/main/binary-amd64/Packages"
    gzip -9nkf "$dist/main/binary-amd64/Packages"
    (cd "$dist" && apt-ftparchive \
        -o APT::FTPArchive::Release::Origin=kupd -o APT::FTPArchive::Release::Label=kupd \
        -o APT::FTPArchive::Release::Suite="$suite" -o APT::FTPArchive::Release::Codename="$suite" \
        -o APT::FTPArchive::Release::Architectures=amd64 -o APT::FTPArchive::Release::Components=main \
        release .) >"$dist/Release.tmp"
    mv "$dist/Release.tmp" "$dist/Release"
    gpg --batch --yes --local-user "$key" --clearsign -o "$dist/InRelease" "$dist/Release"
    gpg --batch --yes --local-user "$key" --armor --detach-sign -o "$dist/Release.gpg" "$dist/Release"
done

# dnf: signed packages, metadata, signed repomd.xml.
gpg --batch --yes --armor --export "$key" >"$out/rpm/RPM-GPG-KEY-kupd"
if [ -n "$rpms" ]; then
    # shellcheck disable=SC2086 # word splitting of the list of paths is intended
    rpmsign --define "_gpg_name $key" --define "__gpg $(command -v gpg)" --addsign $rpms >/dev/null
fi
if ls "$out"/rpm/x86_64/*.rpm >/dev/null 2>&1; then
    createrepo_c --quiet --update "$out/rpm/x86_64" >/dev/null
    gpg --batch --yes --local-user "$key" --armor --detach-sign -o "$out/rpm/x86_64/repodata/repomd.xml.asc" \
        "$out/rpm/x86_64/repodata/repomd.xml"
fi
echo "$out"
