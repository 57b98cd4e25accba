// The bounds-checked reader and the writer that icow's wire code is built on.
//
// A Reader is a borrowed byte range and a cursor. Every read checks the bytes
// left first and throws ParseError on a short buffer, so no read can leave the
// buffer whatever the input claims.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

namespace icow {

// A request the client must fix; the message says what is wrong.
struct ParseError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// A request that is not valid protobuf at all.
struct WireError : ParseError {
    using ParseError::ParseError;
};

// Protobuf wire types.
enum WireType : uint32_t { VARINT = 0, I64 = 1, LEN = 2, SGROUP = 3, EGROUP = 4, I32 = 5 };

// A byte range of the request: offset and length, valid while the request is.
struct Span {
    size_t off = 0;
    size_t len = 0;
};

struct Reader {
    const char *base;  // start of the whole message: spans are relative to it
    const char *pos;
    const char *end;

    Reader(const char *b, size_t n) : base(b), pos(b), end(b + n) {}
    Reader(const char *b, Span s) : base(b), pos(b + s.off), end(b + s.off + s.len) {}

    size_t left() const { return static_cast<size_t>(end - pos); }
    bool done() const { return pos >= end; }

    uint64_t varint() {
        uint64_t value = 0;
        for (int shift = 0; shift < 64; shift += 7) {
            if (pos >= end) throw WireError("message ends inside a varint");
            const auto byte = static_cast<uint8_t>(*pos++);
            value |= static_cast<uint64_t>(byte & 0x7f) << shift;
            if (!(byte & 0x80)) return value;
        }
        throw WireError("varint longer than 10 bytes");
    }

    template <typename T>
    T fixed() {
        if (left() < sizeof(T)) throw WireError("message ends inside a fixed-size field");
        T value;
        std::memcpy(&value, pos, sizeof(T));  // little-endian hosts only (x86-64, aarch64)
        pos += sizeof(T);
        return value;
    }

    Span bytes() {
        const uint64_t n = varint();
        if (n > left())
            throw WireError("a field declares " + std::to_string(n) + " bytes but only " +
                             std::to_string(left()) + " remain");
        Span s{static_cast<size_t>(pos - base), static_cast<size_t>(n)};
        pos += n;
        return s;
    }

    // Skip a field of an unknown number, as protobuf does.
    void skip(uint32_t wire_type, uint32_t field, int depth = 0) {
        switch (wire_type) {
            case VARINT: varint(); return;
            case I64: fixed<uint64_t>(); return;
            case LEN: bytes(); return;
            case I32: fixed<uint32_t>(); return;
            case SGROUP: skip_group(field, depth); return;
            default: throw WireError("invalid wire type " + std::to_string(wire_type));
        }
    }

    // (field number, wire type) of the next field.
    std::pair<uint32_t, uint32_t> tag() {
        const uint64_t key = varint();
        const uint64_t field = key >> 3;
        if (field == 0 || field > 0x1fffffff) throw WireError("invalid field number " + std::to_string(field));
        return {static_cast<uint32_t>(field), static_cast<uint32_t>(key & 7)};
    }

  private:
    void skip_group(uint32_t field, int depth) {
        if (depth > 64) throw WireError("groups nested too deeply");
        while (true) {
            if (done()) throw WireError("message ends inside a group");
            auto [f, wt] = tag();
            if (wt == EGROUP) {
                if (f != field) throw WireError("group end does not match its start");
                return;
            }
            skip(wt, f, depth + 1);
        }
    }
};

// Sizes and writes of the protobuf wire format, for the response builder.
inline size_t varint_size(uint64_t v) {
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        ++n;
    }
    return n;
}

inline char *write_varint(char *dst, uint64_t v) {
    while (v >= 0x80) {
        *dst++ = static_cast<char>((v & 0x7f) | 0x80);
        v >>= 7;
    }
    *dst++ = static_cast<char>(v);
    return dst;
}

inline uint32_t key(uint32_t field, uint32_t wire_type) { return field << 3 | wire_type; }

}  // namespace icow
