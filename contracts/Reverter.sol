// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

/// Reverts in each way a pre-flight `eth_call` must decode: a reason string, no reason, a custom
/// error with arguments, and a panic; `succeed` is the call that goes through.
contract Reverter {
    error Refused(address who, uint256 amount);

    uint256 public stored;

    function failWithReason() external pure {
        require(false, "no reason to go on");
    }

    function failWithoutReason() external pure {
        revert();
    }

    function failWithCustom(uint256 amount) external view {
        revert Refused(msg.sender, amount);
    }

    /// Panic 0x11: checked arithmetic overflows (the stored value is read so that the compiler
    /// cannot fold the overflow away at compile time).
    function failWithPanic() external view returns (uint256) {
        return type(uint256).max - stored + 1 + stored;
    }

    /// Panic 0x12: division by zero.
    function failWithDivision(uint256 divisor) external pure returns (uint256) {
        return 1 / divisor;
    }

    function succeed(uint256 x) external {
        stored = x;
    }
}
