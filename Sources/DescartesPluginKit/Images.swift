import DescartesCore

extension ImageInput {
    /// The image as an Anthropic Messages content block (also what Claude
    /// Code's stream-json input takes): `{"type": "image", "source":
    /// {"type": "base64", "media_type", "data"} | {"type": "url", "url"}}`.
    public var anthropicBlock: JSONValue {
        switch source {
        case .data(let type, let b64):
            return ["type": "image", "source": ["type": "base64", "media_type": .string(type), "data": .string(b64)]]
        case .url(let u):
            return ["type": "image", "source": ["type": "url", "url": .string(u)]]
        }
    }
}
