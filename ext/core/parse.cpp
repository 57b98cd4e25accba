// ModelInferRequest wire format (proto/inference.proto):
//   1 model_name, 2 model_version, 3 id: string
//   4 parameters: map<string, InferParameter>   5 inputs: InferInputTensor
//   6 outputs: InferRequestedOutputTensor        7 raw_input_contents: bytes
// Known fields with a wrong wire type are rejected (protobuf would skip them as
// unknown, which only hides a client's bug); unknown fields are skipped.

#include "parse.hpp"

#include <algorithm>
#include <limits>
#include <string_view>
#include <unordered_set>

namespace icow {
namespace {

// ---- Fields to spans: parameters, shapes, tensors -------------------------
std::string_view view(const char *base, Span s) { return {base + s.off, s.len}; }

void expect(uint32_t wire_type, uint32_t wanted, const char *field) {
    if (wire_type != wanted)
        throw WireError(std::string("field ") + field + " has wire type " + std::to_string(wire_type) +
                         ", expected " + std::to_string(wanted));
}

Param parse_param_value(const char *base, Span s, Param p) {
    Reader r(base, s);
    while (!r.done()) {
        auto [f, wt] = r.tag();
        switch (f) {
            case 1: expect(wt, VARINT, "InferParameter.bool_param"); p.kind = Param::BOOL; p.i = r.varint() != 0; break;
            case 2: expect(wt, VARINT, "InferParameter.int64_param"); p.kind = Param::INT64; p.i = static_cast<int64_t>(r.varint()); break;
            case 3: expect(wt, LEN, "InferParameter.string_param"); p.kind = Param::STRING; p.s = r.bytes(); break;
            case 4: expect(wt, I64, "InferParameter.double_param"); p.kind = Param::DOUBLE; p.d = r.fixed<double>(); break;
            case 5: expect(wt, VARINT, "InferParameter.uint64_param"); p.kind = Param::UINT64; p.u = r.varint(); break;
            default: r.skip(wt, f);
        }
    }
    return p;
}

// One map entry: key = 1, value = 2. A repeated key replaces the earlier one.
void parse_param(const char *base, Span s, std::vector<Param> &params) {
    Reader r(base, s);
    Param p;
    Span value;
    bool has_value = false;
    while (!r.done()) {
        auto [f, wt] = r.tag();
        if (f == 1) {
            expect(wt, LEN, "parameters.key");
            p.key = r.bytes();
        } else if (f == 2) {
            expect(wt, LEN, "parameters.value");
            value = r.bytes();
            has_value = true;
        } else {
            r.skip(wt, f);
        }
    }
    if (has_value) p = parse_param_value(base, value, p);
    for (auto &q : params)
        if (view(base, q.key) == view(base, p.key)) {
            q = p;
            return;
        }
    params.push_back(p);
}

void parse_shape(Reader &r, uint32_t wt, std::vector<int64_t> &shape) {
    if (wt == VARINT) {
        shape.push_back(static_cast<int64_t>(r.varint()));
    } else if (wt == LEN) {  // packed, the usual form
        Reader packed(r.base, r.bytes());
        shape.reserve(shape.size() + std::min<size_t>(packed.left(), 8));  // a varint takes a byte at least
        while (!packed.done()) shape.push_back(static_cast<int64_t>(packed.varint()));
    } else {
        expect(wt, LEN, "InferInputTensor.shape");
    }
}

InputTensor parse_input(const char *base, Span s) {
    Reader r(base, s);
    InputTensor in;
    while (!r.done()) {
        auto [f, wt] = r.tag();
        switch (f) {
            case 1: expect(wt, LEN, "InferInputTensor.name"); in.name = r.bytes(); break;
            case 2: expect(wt, LEN, "InferInputTensor.datatype"); in.datatype = r.bytes(); break;
            case 3: parse_shape(r, wt, in.shape); break;
            case 4: expect(wt, LEN, "InferInputTensor.parameters"); parse_param(base, r.bytes(), in.params); break;
            case 5: expect(wt, LEN, "InferInputTensor.contents"); in.contents.push_back(r.bytes()); break;
            default: r.skip(wt, f);
        }
    }
    return in;
}

OutputTensor parse_output(const char *base, Span s) {
    Reader r(base, s);
    OutputTensor out;
    while (!r.done()) {
        auto [f, wt] = r.tag();
        if (f == 1) {
            expect(wt, LEN, "InferRequestedOutputTensor.name");
            out.name = r.bytes();
        } else if (f == 2) {
            expect(wt, LEN, "InferRequestedOutputTensor.parameters");
            parse_param(base, r.bytes(), out.params);
        } else {
            r.skip(wt, f);
        }
    }
    return out;
}

// ---- Checks of one input against its own declaration ----------------------
std::string shape_text(const std::vector<int64_t> &shape) {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

std::string known_datatypes() {
    std::string s;
    for (const auto &d : DATATYPES) s += (s.empty() ? "" : ", ") + std::string(d.name);
    return s;
}

uint64_t element_count(const std::vector<int64_t> &shape, const std::string &what) {
    uint64_t count = 1;
    for (int64_t d : shape)
        if (d < 0) throw ParseError(what + ": shape " + shape_text(shape) + " has a negative dimension");
    for (int64_t d : shape)
        if (__builtin_mul_overflow(count, static_cast<uint64_t>(d), &count))
            throw ParseError(what + ": shape " + shape_text(shape) + " has more elements than fit in 64 bits");
    return count;
}

// Walk length-prefixed BYTES elements: exactly `count` of them must fill `data`.
void check_bytes_elements(const char *base, Span data, uint64_t count, const std::string &what) {
    Reader r(base, data);
    for (uint64_t i = 0; i < count; ++i) {
        if (r.left() < 4)
            throw ParseError(what + ": BYTES contents do not hold " + std::to_string(count) +
                             " elements: they end inside the length prefix of element " + std::to_string(i));
        const uint32_t n = r.fixed<uint32_t>();
        if (n > r.left())
            throw ParseError(what + ": BYTES contents do not hold " + std::to_string(count) + " elements: element " +
                             std::to_string(i) + " declares " + std::to_string(n) + " bytes but only " +
                             std::to_string(r.left()) + " remain");
        r.pos += n;
    }
    if (!r.done())
        throw ParseError(what + ": BYTES contents do not hold " + std::to_string(count) + " elements: " +
                         std::to_string(r.left()) + " bytes remain after the last");
}

// ---- Typed contents, gathered into the raw layout -------------------------
template <typename T>
void append(std::string &out, T value) {
    out.append(reinterpret_cast<const char *>(&value), sizeof(T));
}

// One typed value, from a varint or fixed field, appended in the raw layout.
void append_value(Reader &r, const Datatype &t, std::string &out, const std::string &what) {
    const auto too_big = [&]() {
        return ParseError(what + ": a value in " + contents_name(t.contents) + " does not fit " + std::string(t.name));
    };
    switch (t.contents) {
        case BOOL_CONTENTS: out.push_back(r.varint() != 0); return;
        case INT_CONTENTS: {
            const auto v = static_cast<int32_t>(static_cast<uint32_t>(r.varint()));  // int32 as protobuf reads it
            if (t.size == 1 && (v < INT8_MIN || v > INT8_MAX)) throw too_big();
            if (t.size == 2 && (v < INT16_MIN || v > INT16_MAX)) throw too_big();
            if (t.size == 1) append(out, static_cast<int8_t>(v));
            else if (t.size == 2) append(out, static_cast<int16_t>(v));
            else append(out, v);
            return;
        }
        case UINT_CONTENTS: {
            const auto v = static_cast<uint32_t>(r.varint());
            if ((t.size == 1 && v > UINT8_MAX) || (t.size == 2 && v > UINT16_MAX)) throw too_big();
            if (t.size == 1) append(out, static_cast<uint8_t>(v));
            else if (t.size == 2) append(out, static_cast<uint16_t>(v));
            else append(out, v);
            return;
        }
        case INT64_CONTENTS:
        case UINT64_CONTENTS: append(out, r.varint()); return;
        case FP32_CONTENTS: append(out, r.fixed<float>()); return;
        case FP64_CONTENTS: append(out, r.fixed<double>()); return;
        default: throw ParseError(what + ": no typed contents for " + std::string(t.name));
    }
}

uint32_t scalar_wire_type(Contents c) {
    return c == FP32_CONTENTS ? I32 : c == FP64_CONTENTS ? I64 : VARINT;
}

// Gather one input's typed contents into `in.typed`, in raw layout.
void gather_typed(const char *base, InputTensor &in, const std::string &what) {
    const Datatype &t = *in.type;
    if (t.contents == NO_CONTENTS)
        throw ParseError(what + ": " + std::string(t.name) + " has no typed contents; send it in raw_input_contents");
    // Reserve for what the contents can hold, not for what the shape claims:
    // a wire element takes at least one byte and becomes at most 8 (or 4 + its
    // bytes for BYTES), so a huge shape cannot make us allocate.
    size_t wire_bytes = 0;
    for (Span s : in.contents) wire_bytes += s.len;
    uint64_t claimed;
    if (__builtin_mul_overflow(in.count, static_cast<uint64_t>(t.size ? t.size : 5), &claimed)) claimed = UINT64_MAX;
    in.typed.reserve(static_cast<size_t>(std::min<uint64_t>(claimed, uint64_t{wire_bytes} * 8)));
    uint64_t elements = 0;
    for (Span s : in.contents) {
        Reader r(base, s);
        while (!r.done()) {
            auto [f, wt] = r.tag();
            if (f < 1 || f > 8) {
                r.skip(wt, f);
                continue;
            }
            if (f != static_cast<uint32_t>(t.contents))
                throw ParseError(what + ": " + std::string(t.name) + " takes " + contents_name(t.contents) + ", got " +
                                 contents_name(static_cast<int>(f)));
            if (t.contents == BYTES_CONTENTS) {
                expect(wt, LEN, "bytes_contents");
                Span e = r.bytes();
                if (e.len > UINT32_MAX) throw ParseError(what + ": a BYTES element is larger than 4 GiB");
                append(in.typed, static_cast<uint32_t>(e.len));
                in.typed.append(base + e.off, e.len);
                ++elements;
            } else if (wt == LEN) {  // packed
                Reader packed(base, r.bytes());
                while (!packed.done()) {
                    append_value(packed, t, in.typed, what);
                    ++elements;
                }
            } else {
                expect(wt, scalar_wire_type(t.contents), contents_name(t.contents));
                append_value(r, t, in.typed, what);
                ++elements;
            }
            if (elements > in.count) break;
        }
    }
    if (elements != in.count)
        throw ParseError(what + ": shape " + shape_text(in.shape) + " needs " + std::to_string(in.count) +
                         " elements, got " + (elements > in.count ? "more" : std::to_string(elements)) + " in " +
                         contents_name(t.contents));
}

// ---- One input checked ----------------------------------------------------
bool names_region(const char *base, const std::vector<Param> &params) {
    for (const auto &p : params)
        if (view(base, p.key) == "shared_memory_region") return true;
    return false;
}

// `raw` is the input's raw_input_contents entry, or null when the request has none
// for it. Inputs in shared memory take none: raw_input_contents holds the other
// inputs' contents, in order, as Triton's clients send them.
void check_input(const char *base, InputTensor &in, const Span *raw, bool request_has_raw) {
    const std::string what = "input '" + std::string(view(base, in.name)) + "'";
    in.type = find_datatype(view(base, in.datatype));
    if (!in.type)
        throw ParseError(what + ": unknown datatype '" + std::string(view(base, in.datatype)) +
                         "'; known: " + known_datatypes());
    bool has_typed = false;
    for (Span s : in.contents) has_typed |= s.len > 0;
    in.count = element_count(in.shape, what);
    if (in.shared_memory) {  // its bytes are in a region: the server's registry checks their size
        if (has_typed) throw ParseError(what + ": has typed contents and a shared-memory region; send it one way");
        return;
    }
    if (request_has_raw && has_typed)
        throw ParseError(what + ": has typed contents while the request also uses raw_input_contents; "
                                "send every input one way");
    if (!request_has_raw) {
        gather_typed(base, in, what);
        return;
    }
    in.raw = *raw;
    in.has_raw = true;
    if (in.type->size == 0) {
        check_bytes_elements(base, in.raw, in.count, what);
        return;
    }
    uint64_t expected;
    if (__builtin_mul_overflow(in.count, static_cast<uint64_t>(in.type->size), &expected) || expected != in.raw.len)
        throw ParseError(what + ": shape " + shape_text(in.shape) + " of " + std::string(in.type->name) + " needs " +
                         (expected == in.raw.len ? "more" : std::to_string(expected)) + " bytes, got " +
                         std::to_string(in.raw.len));
}

// ---- The whole request ----------------------------------------------------
Request parse_and_check(const char *data, size_t n) {
    Reader r(data, n);
    Request req;
    while (!r.done()) {
        auto [f, wt] = r.tag();
        switch (f) {
            case 1: expect(wt, LEN, "model_name"); req.model_name = r.bytes(); break;
            case 2: expect(wt, LEN, "model_version"); req.model_version = r.bytes(); break;
            case 3: expect(wt, LEN, "id"); req.id = r.bytes(); break;
            case 4: expect(wt, LEN, "parameters"); parse_param(data, r.bytes(), req.params); break;
            case 5: expect(wt, LEN, "inputs"); req.inputs.push_back(parse_input(data, r.bytes())); break;
            case 6: expect(wt, LEN, "outputs"); req.outputs.push_back(parse_output(data, r.bytes())); break;
            case 7: expect(wt, LEN, "raw_input_contents"); req.raw.push_back(r.bytes()); break;
            default: r.skip(wt, f);
        }
    }
    size_t in_message = 0;  // inputs whose contents travel in the message
    for (auto &in : req.inputs) {
        in.shared_memory = names_region(data, in.params);
        in_message += !in.shared_memory;
    }
    if (!req.raw.empty() && req.raw.size() != in_message)
        throw ParseError("raw_input_contents has " + std::to_string(req.raw.size()) + " entries for " +
                         std::to_string(in_message) + " inputs" +
                         (in_message != req.inputs.size() ? " outside shared memory" : "") +
                         "; it needs one per input, in order");
    // A few inputs (the usual request) are compared pairwise: a set's allocations cost more.
    const bool few = req.inputs.size() <= 8;
    std::unordered_set<std::string_view> names;
    size_t next_raw = 0;
    for (size_t i = 0; i < req.inputs.size(); ++i) {
        auto &in = req.inputs[i];
        const std::string_view name = view(data, in.name);
        bool twice = false;
        for (size_t j = 0; few && j < i && !twice; ++j) twice = view(data, req.inputs[j].name) == name;
        if (twice || (!few && !names.insert(name).second))
            throw ParseError("input '" + std::string(name) + "' appears twice in the request");
        const Span *raw = !req.raw.empty() && !in.shared_memory ? &req.raw[next_raw++] : nullptr;
        check_input(data, in, raw, !req.raw.empty());
    }
    return req;
}

}  // namespace

Request parse_request(const char *data, size_t n) {
    try {
        return parse_and_check(data, n);
    } catch (const WireError &e) {
        throw ParseError(std::string("malformed ModelInferRequest: ") + e.what());
    }
}

}  // namespace icow
